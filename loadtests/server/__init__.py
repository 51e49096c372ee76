"""The reference token server: an ASGI app (Starlette + PyJWT) built on :mod:`sim.strategies`.

``create_app(scenario, strategy_name, ...)`` builds it; ``refreshlab serve`` runs it under uvicorn;
:func:`loadtests.server.process.serve_in_subprocess` runs it in a child process for tests and load
tests. Paths, headers and fields shared with the Locust side live in :mod:`loadtests.server.protocol`.
"""

__all__ = ["create_app", "TokenServer"]


def __getattr__(name: str):
    # imported on first use, so that ``loadtests.server.protocol`` stays light for the Locust side
    if name in __all__:
        from loadtests.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'loadtests.server' has no attribute {name!r}")
