"""`jalwa` command line: serve, token, genconfig. The only place the environment is read."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from turn.config import render as render_turn_config
from turn.config import template as turn_template
from turn.credentials import TurnError

from .auth import Identity, Role, load_keys, mint_token
from .clock import SystemClock
from .errors import ConfigError
from .logs import Redactor
from .settings import ENV_PREFIX, NESTED_DELIMITER, Settings


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jalwa", description="paid 1:1 video-call backend")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the hub (embedded stores unless URLs are set)")
    serve.add_argument("--host", help="listen address (default JALWA_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default JALWA_PORT or 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port, each its own node (needs Redis, PostgreSQL, MongoDB)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    token = sub.add_parser("token", help="mint a JWT with the configured key (dev and tests)")
    token.add_argument("--user", required=True)
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--name", default="")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    sub.add_parser("genconfig", help="print every setting with its default")
    sub.add_parser("migrate", help="apply pending SQL migrations to JALWA_DATABASE_URL")
    turn_config = sub.add_parser("turn-config", help="print coturn's turnserver.conf")
    turn_config.add_argument(
        "--template", action="store_true", help="the configs/ template (placeholder secret)"
    )
    ledger = sub.add_parser("ledger", help="ledger tools")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    ledger_sub.add_parser("check", help="check every ledger invariant; exit 1 on a problem")
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        settings = Settings.from_env(env)
        if args.command == "serve" and args.workers != 1:
            return _supervise(settings, args.host, args.port, args.workers, env)
        if args.command == "serve":
            return _serve(settings, args.host, args.port, reuse_port=args.reuse_port)
        if args.command == "token":
            return _token(settings, args.user, Role(args.role), args.name, args.ttl)
        if args.command == "turn-config":
            if args.template:
                print(turn_template(), end="")
            else:
                print(
                    render_turn_config(settings.turn, production=settings.turn.production), end=""
                )
            return 0
        if args.command == "migrate":
            return asyncio.run(_migrate(_database_url(settings)))
        if args.command == "ledger":
            return asyncio.run(_ledger_check(settings, _database_url(settings)))
        print(genconfig())
        return 0
    except ValidationError as exc:
        print(f"jalwa: bad settings:\n{exc}", file=sys.stderr)
        return 2
    except (ConfigError, TurnError, ValueError) as exc:
        print(f"jalwa: {exc}", file=sys.stderr)
        return 2


def _database_url(settings: Settings) -> str:
    if settings.database_url is None:
        raise ConfigError("set JALWA_DATABASE_URL to the PostgreSQL database")
    return settings.database_url


async def _migrate(url: str) -> int:
    import asyncpg

    from billing.migrate import migrate

    conn = await asyncpg.connect(url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    print("applied: " + ", ".join(applied) if applied else "nothing to apply")
    return 0


async def _ledger_check(settings: Settings, url: str) -> int:
    import asyncpg

    from billing.ledger_pg import PgLedger

    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        problems = await PgLedger(pool, settings.billing).check()
    finally:
        await pool.close()
    for problem in problems:
        print(f"FAIL {problem.check}: {problem.detail}")
    if not problems:
        print("ledger ok: every invariant holds")
    return 1 if problems else 0


def _token(settings: Settings, user: str, role: Role, name: str, ttl: int) -> int:
    keys = load_keys(settings, create_dev_key=True)
    print(
        mint_token(
            keys, settings.auth, Identity(user, role, name or user), ttl_s=ttl, clock=SystemClock()
        )
    )
    return 0


def _serve(
    settings: Settings, host: str | None, port: int | None, *, reuse_port: bool = False
) -> int:
    from .app import create_app

    host = host or settings.host
    port = settings.port if port is None else port
    _configure_logging(settings)
    _check_key(settings, host)
    app = create_app(settings)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_run_server(app, host, port, settings, reuse_port))
    return 0


def _check_key(settings: Settings, host: str) -> None:
    keys = load_keys(settings, create_dev_key=True)
    if keys.dev and not _loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} with the development key: "
            "set JALWA_AUTH__SECRET (or a public key) to serve beyond loopback"
        )


def _supervise(
    settings: Settings, host: str | None, port: int | None, workers: int, env: Mapping[str, str]
) -> int:
    from .workers import Supervisor

    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    missing = [
        name
        for name, url in (
            ("JALWA_REDIS_URL", settings.redis_url),
            ("JALWA_DATABASE_URL", settings.database_url),
            ("JALWA_MONGO_URL", settings.mongo_url),
        )
        if url is None
    ]
    if missing:
        # Embedded stores are per process: N workers would be N separate services.
        raise ConfigError(
            "--workers needs the shared stores (each worker is a node on them); set "
            + ", ".join(missing)
        )
    host = host or settings.host
    port = settings.port if port is None else port
    _configure_logging(settings)
    _check_key(settings, host)  # also writes the dev key once, before the workers read it
    supervisor = Supervisor(
        workers=workers,
        host=host,
        port=port,
        node_id=settings.node_id,
        environ=env,
        stop_timeout_s=settings.hub.drain_deadline_s + settings.shutdown_timeout_s + 5,
    )
    return supervisor.run()


GC_THRESHOLDS = (50_000, 20, 100)  # generation 0 allocations, then collections of 0 and 1
TIMEOUT_CEIL_THRESHOLD_S = 3600.0
STUCK_AFTER_S = 15.0  # past the handlers' shutdown timeout: the store closes have had time


async def _run_server(
    app: Any, host: str, port: int, settings: Settings, reuse_port: bool = False
) -> None:
    """Serve until SIGINT (shut down now: sessions get 1012, calls end) or SIGTERM (drain
    first, see drain.py; a second signal stops the drain)."""
    from aiohttp import web

    from .drain import drain, log_task_stacks, settle_margin

    deadline = settings.hub.drain_deadline_s
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=min(settings.shutdown_timeout_s, settle_margin(deadline) or 1.0),
        access_log=None,
        # aiohttp rounds timeouts longer than this up to a whole second: the heartbeats of
        # all the sessions opened in one second fired in the same loop step (~1,400 pings
        # at once at 10,000 sessions). Exact times spread them out.
        timeout_ceil_threshold=TIMEOUT_CEIL_THRESHOLD_S,
    )
    # Bound before any task starts: every task (and so every log line) inherits it.
    structlog.contextvars.bind_contextvars(node=settings.node_id)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        logging.getLogger("jalwa").info("listening on http://%s:%d", host, port)
        # What is alive now (modules, settings, the app) lives as long as the process: the
        # collector never walks it again. A full collection of it was a ~30 ms stall in the
        # path of every frame (docs/benchmarks.md: +10% relayed msg/s, a steadier p99).
        gc.freeze()
        # Sessions' objects live minutes to hours and their heartbeats' timers seconds: at
        # the default thresholds 10,000 idle sessions cost a full collection every ~10 s,
        # each up to ~1 s with every frame waiting (docs/benchmarks.md, "The collector
        # at 10,000 sessions").
        gc.set_threshold(*GC_THRESHOLDS)
        if settings.env == "development" and settings.hub.demo_page:
            bound = runner.addresses[0]
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            page = f"http://{shown}:{bound[1]}/"
            if settings.log_json:  # a log collector reads the stream: JSON lines only
                logging.getLogger("jalwa").info("the demo app is at %s", page)
            else:  # the README's first command ends by saying where to look
                print(f"jalwa: the demo app is at {page}", flush=True)
        signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, signals.put_nowait, sig)
        first = await signals.get()
        if first is signal.SIGTERM and deadline > 0:
            logging.getLogger("jalwa").info("SIGTERM: draining (deadline %g s)", deadline)
            draining = asyncio.ensure_future(drain(app, deadline))
            again = asyncio.ensure_future(signals.get())
            await asyncio.wait({draining, again}, return_when=asyncio.FIRST_COMPLETED)
            for task in (draining, again):
                task.cancel()
            await asyncio.gather(draining, again, return_exceptions=True)
        logging.getLogger("jalwa").info("stopping")
    finally:
        # A shutdown that should be over says what it is still waiting for, once.
        stuck = asyncio.get_running_loop().call_later(
            settings.shutdown_timeout_s + STUCK_AFTER_S, log_task_stacks, "shutdown not over"
        )
        try:
            await runner.cleanup()
        finally:
            stuck.cancel()


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return None
    return uvloop.new_event_loop


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _configure_logging(settings: Settings) -> None:
    """JSON lines in production (or with ``log_json``), readable lines in a terminal. Every
    line carries what is bound for it (``node``; ``user_id`` and ``call_id`` on the paths
    that have them, see logs.py) and goes through ``redact``."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.log_json or settings.env == "production"
        # Plain tracebacks: rich ones cost ~1 s of CPU each, and a burst of errors must not
        # become a burst of rendering.
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                Redactor(_secrets(settings)),
                renderer,
            ],
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.ExtraAdder(),
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso"),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def _secrets(settings: Settings) -> list[str]:
    found = [settings.auth.secret, settings.turn.secret, settings.billing.recharge_secret]
    return [s.get_secret_value() for s in found if s is not None]


def genconfig() -> str:
    """Every setting as an environment line with its default and a one-line comment."""
    lines = ["# jalwa settings: environment variables, defaults shown", ""]
    _describe(Settings, ENV_PREFIX, lines)
    return "\n".join(lines)


def _describe(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        key = f"{prefix}{name.upper()}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.append(f"# --- {name}: {(annotation.__doc__ or '').strip().splitlines()[0]}")
            _describe(annotation, key + NESTED_DELIMITER, lines)
            lines.append("")
            continue
        if field.default_factory is not None:
            default = "" if name == "node_id" else _render(field.default_factory())  # type: ignore[call-arg]
        else:
            default = _render(field.default)
        lines.append(f"# {field.description or name}")
        lines.append(f"{'# ' if default == '' else ''}{key}={default}")


def _render(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        import json

        return json.dumps(list(value))
    return str(value)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
