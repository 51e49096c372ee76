"""The compiled inner loops (:mod:`sim.engine._kernel`, built by ``setup.py``): :data:`KERNEL` is
the module when the package carries it compiled from the source beside it, else None — no C
compiler at install, or the source changed since it was built (rebuild with ``pip install -e
.``) — and the engine then does the same work in Python, to the same answers, more slowly."""

from __future__ import annotations

import os
import warnings


def stale(compiled: str, source: str) -> bool:
    """Whether the module compiled at ``compiled`` was built before its ``source`` last changed
    (an installed package may carry no source: then it is not)."""
    return os.path.exists(source) and os.path.getmtime(source) > os.path.getmtime(compiled)


def _load():
    try:
        from sim.engine import _kernel
    except ImportError:
        return None
    if stale(_kernel.__file__, os.path.join(os.path.dirname(__file__), "_kernel.pyx")):
        warnings.warn(f"{_kernel.__file__} is older than its source and is not used until rebuilt "
                      "(pip install -e .)", RuntimeWarning, stacklevel=2)
        return None
    return _kernel


KERNEL = _load()
