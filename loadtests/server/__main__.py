"""``python -m loadtests.server SCENARIO --strategy NAME ...``: the ``serve`` command on its own
(what :mod:`loadtests.server.process` starts)."""

import typer

from loadtests.server.cli import register

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
register(app)

if __name__ == "__main__":
    app()
