"""Every simulating command estimates its work first: ``sweep`` per point and ``capacity`` for
its largest population refuse what the machine cannot hold (exit 2, the estimate in the message)
or, with ``--force``, warn and run — the same check as ``run`` and ``compare``."""

import tomli_w

from sim import estimate, load_scenario
from tests.conftest import scenario_dict


def tiny(tmp_path, users=2):
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(scenario_dict(run={"seed": 1, "duration": "2m", "warmup": "0s", "replications": 1},
                                                population={"users": users, "arrival": {"pattern": "all_at_once"}})))
    return path


def machine_with(monkeypatch, free_bytes):
    monkeypatch.setattr(estimate, "available_bytes", lambda: float(free_bytes))


def test_sweep_refuses_an_oversized_point_before_running_any(cli, tmp_path, monkeypatch):
    path = tiny(tmp_path)
    small = estimate.estimate(load_scenario(path, {"population.users": 2}), parallel=None).peak_bytes
    big = estimate.estimate(load_scenario(path, {"population.users": 100_000}), parallel=None).peak_bytes
    machine_with(monkeypatch, (small + big) / 2)  # the 2-user point fits, the 100k-user one does not
    out = tmp_path / "sweep"
    code, _, err = cli("sweep", path, "--set", "population.users=2,100000", "--out", out, "--no-report")
    assert code == 2, err
    assert "sweep point users=100000" in err and "needing about" in err and "--force" in err, err
    assert "Traceback" not in err and not (out / "sweep.csv").exists()
    assert not out.exists() or not any(out.glob("*/summary.csv"))  # nothing ran, not even the small point


def test_sweep_with_force_warns_and_runs(cli, tmp_path, monkeypatch):
    path = tiny(tmp_path)
    machine_with(monkeypatch, 1e6)  # less than any replication's base: every point is "too big"
    out = tmp_path / "sweep"
    code, _, err = cli("sweep", path, "--set", "auth.workers=1,2", "--out", out, "--no-report", "--force", "--processes", "1")
    assert code == 0, err
    assert err.count("running anyway (--force)") == 2 and "needing about" in err, err
    assert (out / "sweep.csv").is_file()


def test_capacity_estimates_its_largest_population(cli, tmp_path, monkeypatch):
    path = tiny(tmp_path)
    small = estimate.estimate(load_scenario(path, {"population.users": 5}), parallel=None).peak_bytes
    big = estimate.estimate(load_scenario(path, {"population.users": 200_000}), parallel=None).peak_bytes
    machine_with(monkeypatch, (small + big) / 2)  # the smallest population fits, the largest does not
    out = tmp_path / "cap"
    code, _, err = cli("capacity", path, "--slo", "auth_queue_wait_ms_p99 < 100", "--users", "5,200k", "--out", out)
    assert code == 2, err
    assert "capacity at 200,000 users" in err and "needing about" in err and "--force" in err, err
    assert not out.exists()
    # the largest population alone decides: the same command without it runs
    code, _, err = cli("capacity", path, "--slo", "auth_queue_wait_ms_p99 < 100", "--users", "5", "--out", out)
    assert code == 0 and "needing about" not in err, err


def test_capacity_with_force_warns_and_runs(cli, tmp_path, monkeypatch):
    path = tiny(tmp_path)
    machine_with(monkeypatch, 1e6)
    out = tmp_path / "cap"
    code, _, err = cli("capacity", path, "--slo", "auth_queue_wait_ms_p99 < 100", "--users", "3,5", "--out", out, "--processes", "1",
                       "--force")
    assert code == 0, err
    assert "running anyway (--force)" in err and "capacity at 5 users" in err, err
    assert (out / "capacity.csv").is_file()
