"""``refreshlab serve``: run the reference token server under uvicorn."""

from __future__ import annotations

import json
import os
import secrets
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
            "--private-key", help="PEM private key (HS256: secret file of 32+ bytes) instead of a key made at start-up.")] = None,
        service_time: Annotated[bool, typer.Option(
            "--service-time/--no-service-time", help="Hold auth workers for the scenario's service times.")] = True,
        store: Annotated[str, typer.Option(
            "--store", help="Where the ledger lives: 'memory', or a Redis URL (redis://127.0.0.1:6379/0) "
                            "shared by several workers.")] = "memory",
        workers: Annotated[int, typer.Option(
            "--workers", help="uvicorn worker processes (more than 1 needs a Redis store).", min=1, max=64)] = 1,
        ledger: Annotated[bool, typer.Option(
            "--ledger/--no-ledger", help="Serve /ledger (totals and records) to loopback clients.")] = False,
        prune: Annotated[bool, typer.Option(
            "--prune/--no-prune", help="Forget ledger entries a while after their tokens expire.")] = True,
        access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = False,
        test_clock: Annotated[bool, typer.Option(
            "--test-clock", help="Tests only: scenario time stands still until a loopback client moves it "
                                 "(POST /test/clock). Needs a loopback --host and one worker.")] = False,
    ):
        """Serve one strategy variant of a scenario as a real HTTP token server and API."""
        import uvicorn

        from loadtests.server.app import SETTINGS_ENV, create_app
        scenario = read_scenario(scenario_path)
        if not time_scale > 0:
            raise fail(f"--time-scale must be > 0, got {time_scale}")
        if workers > 1 and store == "memory":
            raise fail("--workers above 1 needs a shared store: --store redis://HOST:PORT/DB")
        if test_clock and not _is_loopback(host):
            raise fail(f"--test-clock lets clients move the server's time: it serves loopback hosts only "
                       f"(127.0.0.1, ::1, localhost), not {host!r}")
        if test_clock and workers > 1:
            raise fail("--test-clock needs one worker (each worker process would keep its own clock)")
        options = dict(time_scale=time_scale, algorithm=algorithm, service_time=service_time,
                       private_key_path=str(private_key) if private_key else None, store=store,
                       namespace=f"refreshlab:{secrets.token_hex(8)}" if store != "memory" else None,
                       prune=prune, ledger_endpoint=ledger)
        try:
            if test_clock:
                from loadtests.server.clock import ManualClock

                options.update(clock=ManualClock(time_scale), clock_endpoint=True, time_scale=None)
                typer.echo("test clock: scenario time stands still until POST /test/clock moves it "
                           "(tests only; never measure against this server)", err=True)
            server_app = create_app(scenario, strategy, **options)
        except KeyError as exc:
            raise fail(f"{scenario_path}: {exc.args[0]}") from None
        except (ValueError, OSError) as exc:
            raise fail(str(exc)) from None
        if workers == 1:
            uvicorn.run(server_app, host=host, port=port, access_log=access_log, log_level="info")
            return
        server_app.state.server.store.close()
        os.environ[SETTINGS_ENV] = json.dumps({"scenario_path": str(scenario_path), "strategy": strategy, **options})
        uvicorn.run("loadtests.server.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                    access_log=access_log, log_level="info")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
