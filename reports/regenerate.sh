#!/usr/bin/env bash
# Regenerates the committed reports of the bundled scenarios (a few minutes on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
for name in baseline mass_login multi_tab; do
  refreshlab compare "scenarios/$name.toml" --out "reports/$name"
done
