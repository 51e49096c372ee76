"""Strict JSON for ``--json`` and the JSON files of a run folder: ``null`` where a number is
missing (NaN or infinite), never the ``NaN`` tokens that strict parsers refuse."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def clean(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made plain Python, NaN and infinities made None,
    paths made strings; dicts, lists and tuples are walked."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [clean(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        if value != value:  # pandas NA and friends
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def dumps(value: Any) -> str:
    """Strict JSON text (``allow_nan=False`` guards the promise)."""
    return json.dumps(clean(value), indent=2, allow_nan=False)


def records(frame) -> list[dict]:
    """A DataFrame as a list of row dicts, index included, ready for :func:`dumps`."""
    frame = frame.reset_index() if frame.index.name else frame
    return clean(frame.to_dict(orient="records"))
