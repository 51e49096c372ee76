"""The compiled inner loops (built by ``setup.py``): :data:`KERNEL` is :mod:`sim.engine._kernel`
when the package carries it compiled from the source beside it, else None — no C compiler at
install, the source changed since it was built (rebuild with ``pip install -e .``), or a numpy
whose random state it cannot read — and the engine then does the same work in Python, to the same
answers, more slowly. :data:`QUIET_TICKS` is :func:`sim.strategies.ticks.quiet_ticks`, compiled
(``sim.strategies._ticks``) on the same terms."""

from __future__ import annotations

import os
import warnings
from array import array


def stale(compiled: str, source: str) -> bool:
    """Whether the module compiled at ``compiled`` was built before its ``source`` last changed
    (an installed package may carry no source: then it is not)."""
    return os.path.exists(source) and os.path.getmtime(source) > os.path.getmtime(compiled)


def draws_as_numpy(kernel) -> bool:
    """Whether ``kernel.refill`` draws what numpy's ``Generator`` draws from the same state: it
    reads numpy's PCG64 state as laid out where 128-bit integers are native (as the streams'
    lender does, which checks it the same way); a numpy built otherwise would draw other numbers."""
    import numpy as np

    state, inc, word = 0x0123456789ABCDEF_FEDCBA9876543210, 0x1F2E3D4C5B6A7988_99AABBCCDDEEFF01, 0x9E3779B9
    packed = (state.to_bytes(16, "little") + inc.to_bytes(16, "little") + (1).to_bytes(4, "little")
              + word.to_bytes(4, "little"))
    gen = np.random.Generator(np.random.PCG64())
    gen.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc},
                               "has_uint32": 1, "uinteger": word}
    expected = gen.integers(0, 7, 5, dtype=np.int64).astype(float).tolist() + gen.random(3).tolist()
    drawn = kernel.refill(array("d"), 0, packed, 5, kernel.INTEGERS, 0.0, 6.0, False, 0.0)
    drawn = kernel.refill(drawn, 5, None, 3, kernel.UNIFORM01, 0.0, 0.0, False, 0.0)
    return drawn[5:].tolist() == expected


def _compiled(name: str, *sources: str):
    """The compiled module ``name``, or None where it was not built or was built before one of
    its ``sources`` (paths beside it) last changed."""
    import importlib

    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    if any(stale(module.__file__, os.path.join(os.path.dirname(module.__file__), source)) for source in sources):
        warnings.warn(f"{module.__file__} is older than its source and is not used until rebuilt "
                      "(pip install -e .)", RuntimeWarning, stacklevel=3)
        return None
    return module


def _load():
    kernel = _compiled("sim.engine._kernel", "_kernel.pyx")
    if kernel is not None and not draws_as_numpy(kernel):
        warnings.warn(f"{kernel.__file__} does not draw numpy's numbers with this numpy build; not used",
                      RuntimeWarning, stacklevel=2)
        return None
    return kernel


KERNEL = _load()

#: :func:`sim.strategies.ticks.quiet_ticks`, compiled where ``setup.py`` built it, else itself
QUIET_TICKS = getattr(_compiled("sim.strategies._ticks", "ticks.py", "_ticks.pxd"), "quiet_ticks", None)
if QUIET_TICKS is None:
    from sim.strategies.ticks import quiet_ticks as QUIET_TICKS
