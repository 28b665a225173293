"""``vcstream serve``: the voice conversion server (browser client, WebRTC signalling, REST API,
health and metrics) on one port.

SIGTERM or Ctrl-C drains first: the server keeps listening, /readyz answers 503 and new sessions are
refused while running ones get ``shutdown_grace_s`` to finish; a second signal stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
from pathlib import Path

from vcstream.errors import ConfigurationError
from vcstream.service.config import ServiceSettings, add_settings_arguments, settings_from_args

log = logging.getLogger("vcstream.serve")

#: after draining, how long open connections (WebSockets) get to close before they are cut
CLOSE_TIMEOUT_S = 5.0


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    bench_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    # no engine options: serving takes 'auto', never random weights, and reads the environment too
    # (see ServiceSettings)
    parser = sub.add_parser(
        "serve",
        help="run the server: browser client, WebRTC signalling, REST API, /metrics",
        description="Run the voice conversion server. Every flag has a VCSTREAM_* environment "
        "variable; flags win. Without Seed-VC weights or a GPU it serves the CPU engine and says so.",
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=cmd_serve)

    calls = bench_sub.add_parser(
        "calls", help="server CPU and threads per real WebRTC call (clients in other processes)"
    )
    calls.add_argument("--engine", choices=("passthrough", "world"), default="passthrough")
    calls.add_argument("--calls", default="1,4,8", help="call counts to measure, comma-separated")
    calls.add_argument("--seconds", type=float, default=10.0, help="measured window per call count")
    calls.add_argument("--warmup", type=float, default=3.0, help="seconds after every call converts")
    calls.add_argument("--rounds", type=int, default=1, help="measurements per call count")
    calls.add_argument(
        "--compare-src",
        type=Path,
        help="also run a server from this source tree (its src/), interleaved: a baseline in the same run",
    )
    calls.set_defaults(func=cmd_bench_calls)


def cmd_bench_calls(args: argparse.Namespace) -> int:
    from vcstream.bench.calls import run_calls_bench

    counts = [int(n) for n in args.calls.split(",")]
    results = run_calls_bench(args.engine, counts, args.seconds, args.warmup, args.compare_src, args.rounds)
    return 1 if any(result.failures for result in results) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not getattr(args, "verbose", False):
        logging.getLogger().setLevel(settings.log_level_number)
    asyncio.run(serve(settings))
    return 0


def _ssl_context(settings: ServiceSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load TLS certificate {settings.tls_cert}: {exc}") from exc
    return context


async def serve(settings: ServiceSettings) -> None:
    """Run until SIGINT/SIGTERM, then drain and stop."""
    from vcstream.service.app import create_app, drain
    from vcstream.service.connection_guard import ConnectionCap, GuardedSite, app_runner
    from vcstream.service.keys import ADMISSION_KEY

    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("%s received: draining (again to stop at once)", sig.name)
            stop.set()
        else:
            hurry.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    ssl_context = _ssl_context(settings)
    app = create_app(settings)
    timeout = settings.header_timeout_s
    runner = app_runner(app, timeout, handle_signals=False, shutdown_timeout=CLOSE_TIMEOUT_S)
    try:
        await runner.setup()  # loads the engine and opens the voice library
        cap = ConnectionCap(settings.max_connections)
        site = GuardedSite(runner, settings.host, settings.port, cap, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
        scheme = "https" if ssl_context else "http"
        for address in runner.addresses:
            host, port = address[0], address[1]
            shown = "localhost" if host in ("0.0.0.0", "::") else host
            log.info("listening on %s://%s:%d/ (open %s://%s:%d/)", scheme, host, port, scheme, shown, port)
        primary = app[ADMISSION_KEY].primary
        (log.warning if primary.cpu_fallback else log.info)("engine: %s", primary.note)
        await stop.wait()
        draining = asyncio.create_task(drain(app))
        hurrying = asyncio.create_task(hurry.wait())
        await asyncio.wait({draining, hurrying}, return_when=asyncio.FIRST_COMPLETED)
        for task in (draining, hurrying):
            task.cancel()
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("stopped")
