"""The reference token server: an ASGI app (Starlette + PyJWT) built on :mod:`sim.strategies`.

``create_app(scenario, strategy_name, ...)`` builds it; ``refreshlab serve`` runs it under uvicorn;
:func:`loadtests.server.process.serve_in_subprocess` runs it in a child process for tests and load
tests. Paths, headers and fields shared with the Locust side live in :mod:`loadtests.server.protocol`.
"""

from loadtests.server.app import TokenServer, create_app

__all__ = ["create_app", "TokenServer"]
