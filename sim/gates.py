"""Pass/fail gates for CI: ``failed_requests > 0``, ``duplicate_per_1k_refresh > 10``,
``auth_queue_wait_ms_p99 > 50``.

A gate names a summary column, a comparison and a threshold; it *fails* a variant when the
comparison holds. It is evaluated per variant on the aggregated row, either on the mean
(``on = "mean"``) or on the side of the 95% confidence interval that is worse for the gate
(``on = "ci"``: for ``>`` the upper bound, for ``<`` the lower one), so that a CI gate fails
whenever the interval reaches past the threshold.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sim.metrics import METRIC_COLUMNS

if TYPE_CHECKING:  # a scenario's gates are parsed where no table is made (simulation workers)
    import pandas as pd

GateOn = Literal["mean", "ci"]
GATE_ON = ("mean", "ci")

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne}
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
EXPECTED = "METRIC OP NUMBER, like 'failed_requests > 0' (OP one of >, >=, <, <=, ==, !=)"


class GateError(ValueError):
    """A gate expression that cannot be evaluated; the message says what was expected."""


@dataclass(frozen=True)
class Gate:
    """``metric op threshold``, evaluated on the mean or on the CI bound."""

    metric: str
    op: str
    threshold: float
    on: GateOn = "mean"

    @property
    def text(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def value(self, row: pd.Series) -> tuple[float, float, float]:
        """(mean, 95% CI half-width, the value compared) of this gate's metric in one aggregated row."""
        mean = _float(row.get(self.metric))
        ci = _float(row.get(f"{self.metric}_ci95"))
        compared = mean
        if self.on == "ci" and not math.isnan(ci):
            # the bound on the side that makes the gate fail
            compared = mean - ci if self.op in ("<", "<=") else mean + ci
        return mean, ci, compared

    def fails(self, compared: float) -> bool | None:
        """True when the gate fails on ``compared``; None when the value is missing."""
        if math.isnan(compared):
            return None
        return bool(_OPS[self.op](compared, self.threshold))


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def parse_gate(text: str, on: GateOn = "mean") -> Gate:
    """``"failed_requests > 0"`` -> a :class:`Gate`; :class:`GateError` naming what was expected."""
    if on not in GATE_ON:
        raise GateError(f"expected the gate basis to be one of {', '.join(GATE_ON)}, got {on!r}")
    match = _EXPR.match(text if isinstance(text, str) else "")
    if not match:
        raise GateError(f"expected {EXPECTED}, got {text!r}")
    metric, op, number = match.groups()
    if metric not in METRIC_COLUMNS:
        hint = difflib.get_close_matches(metric, METRIC_COLUMNS, n=1)
        guess = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise GateError(f"unknown metric {metric!r}{guess}; expected a summary column: {', '.join(METRIC_COLUMNS)}")
    return Gate(metric, op, float(number), on)


def evaluate(gates: list[Gate], aggregate: pd.DataFrame, label: str = "") -> pd.DataFrame:
    """One row per gate and variant of ``aggregate`` (aggregated summary rows indexed by
    strategy): ``run`` (``label``), ``gate``, ``on``, ``strategy``, ``mean``, ``ci95``,
    ``compared``, ``passed`` (False: the gate fails; None: the metric is missing, which fails too)."""
    import pandas as pd

    rows = []
    for gate in gates:
        for strategy, row in aggregate.iterrows():
            mean, ci, compared = gate.value(row)
            failed = gate.fails(compared)
            rows.append({"run": label, "gate": gate.text, "on": gate.on, "strategy": strategy, "mean": mean,
                         "ci95": ci, "compared": compared, "passed": None if failed is None else not failed})
    return pd.DataFrame(rows, columns=["run", "gate", "on", "strategy", "mean", "ci95", "compared", "passed"])


def all_passed(outcome: pd.DataFrame) -> bool:
    """Every gate passed for every variant (a missing value counts as a failure: a gate that
    cannot be checked must not turn CI green)."""
    return bool(len(outcome) == 0 or outcome["passed"].map(lambda p: p is True).all())


def failures(outcome: pd.DataFrame) -> pd.DataFrame:
    return outcome[~outcome["passed"].map(lambda p: p is True)]


def to_json(outcome: pd.DataFrame) -> dict:
    """The content of ``gates.json``: whether everything passed, and every (gate, variant)."""
    from sim.jsonout import clean

    return clean({"passed": all_passed(outcome), "results": outcome.to_dict(orient="records")})
