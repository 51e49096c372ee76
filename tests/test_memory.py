"""The reference server's ledger stays flat in memory over a long run when it prunes (the bench
``bench/bench_ledger_memory.py``, run in child processes), and its totals survive the pruning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.server.store import MemoryStore
from sim.scenario import parse_scenario

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_ledger_memory.py"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_memory_flat_within_20_percent_from_100k_to_500k_refreshes():
    done = subprocess.run([sys.executable, str(BENCH), "--json"], capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    pruned, unpruned = results["pruned"], results["unpruned"]
    assert [row["refreshes"] for row in pruned["checkpoints"]] == [100_000, 500_000]
    assert pruned["rss_ratio_last_to_first"] <= 1.2, pruned
    # what pruning is for: without it the same run keeps every token
    assert unpruned["checkpoints"][-1]["tokens"] > 5 * pruned["checkpoints"][-1]["tokens"]
    print(json.dumps({k: v["rss_ratio_last_to_first"] for k, v in results.items()}))


def test_pruning_forgets_expired_entries_and_keeps_the_totals():
    scenario = parse_scenario({
        "tokens": {"access_ttl": "5m", "refresh_ttl": "1h"},
        "strategies": [{"name": "r", "client": {"trigger": "reactive"},
                        "server": {"kind": "dual_token", "rotation": True, "reuse_detection": "family"}}],
    })
    policy = scenario.strategies[0].server
    store = MemoryStore(retain_s=60.0, records=False)
    ledger = store.ledger
    first = policy.login(ledger, store.user_id("ann"), 0.0)
    renewed = policy.refresh(ledger, first.refresh, first.access.id, 10.0)
    assert len(ledger.tokens) == 4 and len(ledger.sessions) == 1
    # an access token 60 s past its expiry goes; the live refresh family stays
    assert ledger.prune(310.0 + 61.0) == 2
    assert set(ledger.tokens) == {first.refresh.id, renewed.refresh.id}
    # the family lapses at 1 h; 60 s later everything of the session is gone
    ledger.prune(3600.0 + 61.0)
    assert ledger.tokens == {} and ledger.sessions == {}
    totals = ledger.totals()
    assert (totals["sessions"], totals["access_mints"], totals["refresh_mints"], totals["refresh_calls"]) == (1, 2, 2, 1)
    # a new login after pruning gets fresh numbers, never a pruned one's
    again = policy.login(ledger, store.user_id("ann"), 4000.0)
    assert again.access.id > renewed.refresh.id and again.access.session == 2
