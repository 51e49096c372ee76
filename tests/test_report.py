"""Reports and charts: files written, charts embedded, tables present, summary right, sweeps
detected, measured/partial runs labelled, missing numbers tolerated."""

from __future__ import annotations

import base64
import copy
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

import sim
from sim.report import build_report, charts, summary
from sim.report.build import PER_RUN

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result() -> sim.RunResult:
    """A small real run of the smoke scenario: 2 replications, every variant."""
    scenario = sim.load_scenario(ROOT / "scenarios" / "smoke.toml").replace(
        population={"users": 20}, run={"duration_s": 600.0, "warmup_s": 60.0, "replications": 2})
    return sim.run(scenario, processes=1)


@pytest.fixture(scope="module")
def report(result, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert build_report([result], out) == out / "report.html"
    return out


def with_summary(result: sim.RunResult, column: str, values: dict[str, float]) -> sim.RunResult:
    """A copy of ``result`` whose aggregated ``column`` holds ``values`` per variant."""
    changed = copy.copy(result)
    changed.summary = result.summary.copy()
    for name, value in values.items():
        row = (changed.summary["strategy"] == name) & (changed.summary["replication"] == "mean")
        changed.summary.loc[row, column] = value
    return changed


def test_every_chart_is_a_valid_png_and_svg(report):
    for spec in PER_RUN:
        png = report / "charts" / f"{spec.name}.png"
        assert png.read_bytes().startswith(PNG_MAGIC)
        height, width, _ = matplotlib.image.imread(png).shape
        assert width > 800 and height > 400
        root = ET.parse(report / "charts" / f"{spec.name}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_html_embeds_every_chart_and_runs_no_script(report, result):
    html = (report / "report.html").read_text(encoding="utf-8")
    for spec in PER_RUN:
        png = (report / "charts" / f"{spec.name}.png").read_bytes()
        assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in html
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must open offline"
    assert "<pre>" in html and "[population]" in html  # the resolved scenario closes it
    assert html.count("<table ") == len(PER_RUN)
    for name in result.scenario.names:
        assert re.search(rf'<td id="[^"]+" class="data row\d+ col0" >{name}</td>', html), name


def test_markdown_has_a_table_under_every_chart(report, result):
    md = (report / "report.md").read_text(encoding="utf-8")
    for spec in PER_RUN:
        assert f"![{spec.heading}](charts/{spec.name}.png)" in md
    assert len(re.findall(r"^\| variant +\|", md, flags=re.M)) == len(PER_RUN)
    assert re.search(r"\| +Refresh rate \(mints/s\) +\|", md)
    for name in result.scenario.names:
        assert re.search(rf"^\| {name} +\|", md, flags=re.M), name
    assert "```toml" in md


def test_summary_ranks_by_failed_requests_then_forced_logins(result):
    names = result.scenario.names
    changed = with_summary(result, "failed_requests", {names[0]: 0.0, names[1]: 0.0, names[2]: 30.0, names[3]: 0.0})
    changed = with_summary(changed, "failed_requests_ci95", {n: 0.0 for n in names} | {names[2]: 5.0})
    changed = with_summary(changed, "forced_logins", {names[0]: 4.0, names[1]: 0.0, names[2]: 9.0, names[3]: 0.0})
    changed = with_summary(changed, "forced_logins_ci95", {n: 0.0 for n in names} | {names[0]: 1.0})
    # 401s that a retry recovered are a cost, not a failure: many of them must not lower a rank
    changed = with_summary(changed, "expiry_failures", {names[1]: 5000.0, names[3]: 0.0})
    text = summary([changed])
    assert (f"1. {names[1]} and {names[3]}: 0 failed requests, 0 forced logins each; "
            f"2. {names[0]}: 0 failed requests, 4 ±1 forced logins; "
            f"3. {names[2]}: 30 ±5 failed requests, 9 forced logins.") in text
    assert "fewest failures" not in text


def test_summary_says_no_detectable_difference_when_intervals_overlap(result):
    names = result.scenario.names
    changed = with_summary(result, "failed_requests", {names[0]: 10.0, names[1]: 12.0, names[2]: 0.0, names[3]: 0.0})
    changed = with_summary(changed, "failed_requests_ci95", {names[0]: 3.0, names[1]: 3.0, names[2]: 0.0, names[3]: 0.0})
    changed = with_summary(changed, "forced_logins", {n: 0.0 for n in names})
    changed = with_summary(changed, "refresh_rate_per_s", {names[0]: 1.0, names[1]: 1.1, names[2]: 2.0, names[3]: 3.0})
    changed = with_summary(changed, "refresh_rate_per_s_ci95", {names[0]: 0.2, names[1]: 0.2, names[2]: 0.1, names[3]: 0.1})
    text = summary([changed])
    assert (f"2. {names[0]} (10 ±3 failed requests, 0 forced logins), {names[1]} (12 ±3 failed requests, "
            f"0 forced logins)") in text
    assert (f"lowest first, {names[0]} 1 ±0.2/s, {names[1]} 1.1 ±0.2/s (no detectable difference); "
            f"then {names[2]} 2 ±0.1/s; then {names[3]} 3 ±0.1/s.") in text


def test_summary_gives_the_cost_of_duplicates(result):
    names = result.scenario.names  # names[0]: dual token without rotation, one signature per duplicate
    changed = with_summary(result, "duplicate_tokens", {n: 0.0 for n in names} | {names[0]: 40.0})
    changed = with_summary(changed, "duplicate_tokens_ci95", {n: 0.0 for n in names})
    changed = with_summary(changed, "duplicate_per_1k_refresh", {n: 0.0 for n in names} | {names[0]: 125.0})
    changed = with_summary(changed, "duplicate_per_1k_refresh_ci95", {n: 0.0 for n in names})
    text = summary([changed])
    assert f"{names[0]} 125 per 1k refreshes (40 duplicates, 40 extra sign operations)" in text


def test_measured_partial_run_with_missing_numbers_is_labelled_and_drawn(result, tmp_path):
    measured = copy.copy(result)
    measured.kind, measured.partial = "measured", True
    measured.timeseries = result.timeseries.assign(auth_busy_workers=np.nan, auth_queue_len=np.nan)
    measured.latency = result.latency.iloc[0:0]
    measured = with_summary(measured, "exposure_s_mean", {n: np.nan for n in result.scenario.names})
    build_report([measured], tmp_path)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Measured (load test)" in html and "Partial run" in html
    assert "(measured, partial run)" in html
    for name in ("auth_tier", "latency_cdf", "tradeoff"):
        assert (tmp_path / "charts" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def test_chart_functions_return_figures(result):
    for draw in (charts.refresh_load, charts.headline, charts.auth_tier, charts.latency_cdf, charts.tradeoff):
        assert isinstance(draw(result), Figure)
    assert isinstance(charts.sweep([result, result]), Figure)
