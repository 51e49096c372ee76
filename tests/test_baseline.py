"""The bundled baseline shows what the renewal families are known to do."""

import pytest

import sim
from tests.conftest import SCENARIOS


@pytest.fixture(scope="module")
def baseline():
    return sim.run(sim.load_scenario(SCENARIOS / "baseline.toml"))


@pytest.mark.slow
def test_baseline_findings(baseline):
    agg = baseline.aggregate
    assert list(agg.index) == ["dual_token", "dual_token_single_flight", "sliding", "silent_refresh"]
    assert agg.loc["silent_refresh", "expiry_failures"] == 0
    assert agg.loc["dual_token", "duplicate_tokens"] > 0
    assert agg.loc["dual_token_single_flight", "duplicate_tokens"] == 0
    assert agg.loc["sliding", "refresh_calls"] == 0
    # single-flight removes exactly the duplicates: the same expiry hits, fewer refreshes
    plain, single = agg.loc["dual_token"], agg.loc["dual_token_single_flight"]
    assert single["refresh_calls"] == pytest.approx(plain["refresh_calls"] - plain["duplicate_tokens"], rel=0.05)
    # common random numbers: the variants served the same users' requests
    requests = baseline.replications.pivot(index="replication", columns="strategy", values="requests")
    assert (requests.max(axis=1) - requests.min(axis=1) <= 0.001 * requests.mean(axis=1)).all()
