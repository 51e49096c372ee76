"""Faults during ``refreshlab loadtest``: the server killed, the load test itself killed (SIGKILL,
SIGTERM). A result never looks complete, and nothing is left running or lying around."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.loadtest, pytest.mark.timeout(180)]

SCENARIO = Path(__file__).parent / "data" / "loadtest-small.toml"
REFRESHLAB = Path(sys.executable).with_name("refreshlab")


def start_loadtest(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(REFRESHLAB), "loadtest", str(SCENARIO), "--strategy", "dual_token", "--time-scale", "60",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)




def children(process: subprocess.Popen) -> dict[str, psutil.Process]:
    """The load test's server and Locust processes, once both run and Locust has sent requests."""
    found = {}
    try:
        for child in psutil.Process(process.pid).children(recursive=True):
            line = " ".join(child.cmdline())
            if "loadtests.server" in line and "--port" in line:
                found["server"] = child
            elif "-m locust" in line:
                found["locust"] = child
    except psutil.NoSuchProcess:
        return {}
    if len(found) < 2:
        return {}
    records = Path(_arg_after(found["locust"].cmdline(), "--records-dir"))
    return found if any(records.glob("*")) else {}


def _arg_after(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def work_dir(procs: dict[str, psutil.Process]) -> Path:
    return Path(_arg_after(procs["locust"].cmdline(), "--scenario")).parent


def assert_all_gone(procs: dict[str, psutil.Process], folder: Path) -> None:
    everything = list(procs.values())
    for proc in procs.values():
        try:
            everything += proc.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(everything, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    poll_until(lambda: not folder.exists(), 30, f"removal of {folder}")


def test_server_killed_mid_run_gives_a_partial_result_and_a_non_zero_exit(tmp_path):
    out = tmp_path / "run"
    loadtest = start_loadtest(out)
    procs = poll_until(lambda: children(loadtest), what="server and Locust running")
    folder = work_dir(procs)
    procs["server"].kill()
    _, stderr = loadtest.communicate(timeout=120)
    assert loadtest.returncode == 1, stderr
    assert "the reference server died during the run" in stderr and "Traceback" not in stderr
    if out.exists():  # what was measured before the server died: kept, and marked as such
        meta = json.loads((out / "run.json").read_text())
        assert meta["partial"] is True and "died" in meta["failure"]
    assert_all_gone(procs, folder)


def test_kill_9_of_the_load_test_takes_its_server_and_locust_with_it(tmp_path):
    loadtest = start_loadtest(tmp_path / "run")
    procs = poll_until(lambda: children(loadtest), what="server and Locust running")
    folder = work_dir(procs)
    loadtest.kill()
    loadtest.communicate(timeout=30)
    assert_all_gone(procs, folder)
    assert not (tmp_path / "run").exists()


def test_sigterm_stops_the_load_test_like_ctrl_c(tmp_path):
    out = tmp_path / "run"
    loadtest = start_loadtest(out)
    procs = poll_until(lambda: children(loadtest), what="server and Locust running")
    folder = work_dir(procs)
    loadtest.send_signal(signal.SIGTERM)
    _, stderr = loadtest.communicate(timeout=120)
    assert loadtest.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    if out.exists():
        assert json.loads((out / "run.json").read_text())["partial"] is True
    assert_all_gone(procs, folder)
