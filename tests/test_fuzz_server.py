"""schemathesis (its command-line runner, a real third-party fuzzer) against the running reference
server's own OpenAPI description: generated requests, valid and invalid, never get a 5xx, and every
answer matches the description (status, content type, headers, body schema).

One check is left out, ``positive_data_acceptance``: it expects every schema-valid request to be
accepted, but a well-formed refresh token that is not one of ours, or a wrong password, must be
refused with 400 / 401 (RFC 6749 §5.2) — a schema cannot say which strings are live tokens. And
413 counts as a rejection of invalid data (a body over the limit).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtests.server import protocol as p
from loadtests.server.process import serve_in_subprocess

pytestmark = [pytest.mark.loadtest, pytest.mark.timeout(600)]

SCENARIO = Path(__file__).parent / "data" / "server-attacks.toml"
ST = Path(sys.executable).with_name("st")
CONFIG = Path(__file__).parent / "data" / "schemathesis.toml"  # the two check settings explained there


def fuzz(url: str, examples: int, folder: Path, *selection: str) -> str:
    """Run schemathesis on the server's operations (those ``selection`` chooses, all by default);
    fails the test on any failure and returns its summary."""
    grant = httpx.post(url + p.LOGIN_PATH, data={p.USERNAME_FIELD: "fuzz", p.PASSWORD_FIELD: p.TEST_PASSWORD}).json()
    done = subprocess.run(
        [str(ST), "--config-file", str(CONFIG), "run", url + p.OPENAPI_PATH, "--max-examples", str(examples),
         "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--generation-deterministic",
         "--request-timeout", "20", "--no-color", "-H", f"Authorization: Bearer {grant['access_token']}", *selection],
        capture_output=True, text=True, timeout=500, cwd=folder)  # its cache folder goes there
    summary = done.stdout[done.stdout.rfind("SUMMARY"):]
    report = "\n".join(line[:300] for line in (done.stdout + done.stderr).splitlines())
    assert done.returncode == 0, report[-8000:]
    assert "generated" in summary, summary
    return summary


#: a slow check (run by .ci/run): it starts a server and fuzzes every operation
@pytest.mark.slow
@pytest.mark.parametrize("examples", [40])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path, examples):
    # on a test clock: the access token the fuzzer is handed never expires on its own (the fuzzer
    # may still expire it through POST /test/clock, tests only, or revoke it through /logout)
    with serve_in_subprocess(SCENARIO, "rotating", test_clock=True) as url:
        summary = fuzz(url, examples, tmp_path)
    assert "Tested: 10" in summary, summary
    print(summary)
