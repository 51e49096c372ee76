"""``refreshlab serve``: run the reference token server under uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loadtests.server.keys import ALGORITHMS
from sim.cli import ScenarioArg, fail, read_scenario


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the console script's Typer ``app``."""

    @app.command()
    def serve(
        scenario_path: ScenarioArg,
        strategy: Annotated[str, typer.Option("--strategy", help="Strategy variant (its name in the scenario).",
                                              show_default=False)],
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port (0: any free port).", min=0, max=65535)] = 8000,
        time_scale: Annotated[float, typer.Option(
            "--time-scale", help="Scenario seconds per wall second (60: a 15 min token lasts 15 s).")] = 1.0,
        algorithm: Annotated[Optional[str], typer.Option(
            help=f"JWT algorithm, overriding the scenario's: {', '.join(ALGORITHMS)}.")] = None,
        private_key: Annotated[Optional[Path], typer.Option(
            "--private-key", help="PEM private key (HS256: secret file) instead of a key made at start-up.")] = None,
        service_time: Annotated[bool, typer.Option(
            "--service-time/--no-service-time", help="Hold auth workers for the scenario's service times.")] = True,
        access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = False,
    ):
        """Serve one strategy variant of a scenario as a real HTTP token server and API."""
        import uvicorn

        from loadtests.server.app import create_app

        scenario = read_scenario(scenario_path)
        if not time_scale > 0:
            raise fail(f"--time-scale must be > 0, got {time_scale}")
        try:
            server_app = create_app(scenario, strategy, time_scale=time_scale, algorithm=algorithm,
                                    service_time=service_time,
                                    private_key_path=str(private_key) if private_key else None)
        except KeyError as exc:
            raise fail(f"{scenario_path}: {exc.args[0]}") from None
        except (ValueError, OSError) as exc:
            raise fail(str(exc)) from None
        uvicorn.run(server_app, host=host, port=port, access_log=access_log, log_level="info")
