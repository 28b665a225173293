"""RTP sub-commands: ``rtp`` (the converting relay), ``rtp-send`` and ``rtp-receive`` (test tools for
users without their own RTP stack), ``bench latency --transport rtp`` and ``bench bandwidth``.

Long-running commands stop on SIGINT/SIGTERM (or ``--duration``) and print their statistics as one
JSON object per line on stdout, the last one with ``"event": "final"``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from vcstream.commands.options import add_engine_options
from vcstream.errors import ConfigurationError, InvalidAudioError

if TYPE_CHECKING:
    from vcstream.engines.base import Engine, VoiceProfile
    from vcstream.streaming.scheduler import BlockScheduler

#: how often waiting loops look at their stop conditions
_POLL_S = 0.1


# -- argument types --------------------------------------------------------------------------------


def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), _port(port, text)


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT`` (all IPv4 interfaces) or ``ADDRESS:PORT``."""
    if ":" not in text:
        return "0.0.0.0", _port(text, text)
    return parse_endpoint(text)


def parse_range(text: str) -> tuple[int, int]:
    """``MIN:MAX`` milliseconds (or one value for both)."""
    low, _, high = text.partition(":")
    try:
        values = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX in ms, got {text!r}") from None
    return values


def _port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {whole!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {whole!r}")
    return port


def add_codec_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Opus/RTP")
    group.add_argument("--bitrate", type=int, default=32000, help="Opus bitrate, b/s (default 32000)")
    group.add_argument("--frame-ms", type=int, choices=(10, 20), default=20, help="Opus frame size")
    group.add_argument(
        "--fec", action=argparse.BooleanOptionalAction, default=True, help="Opus in-band FEC (default on)"
    )
    group.add_argument(
        "--expected-loss", type=int, default=10, metavar="PCT", help="loss the FEC is sized for (10)"
    )
    group.add_argument("--dtx", action="store_true", help="discontinuous transmission in silence")
    group.add_argument("--payload-type", type=int, default=96, help="RTP payload type (96)")


def codec_from_args(args: argparse.Namespace) -> Any:
    from vcstream.media.rtp import OpusCodecSettings

    return OpusCodecSettings(
        bitrate=args.bitrate,
        frame_ms=args.frame_ms,
        fec=args.fec,
        expected_loss_pct=args.expected_loss,
        dtx=args.dtx,
        payload_type=args.payload_type,
    )


def add_receive_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--latency", type=int, default=60, metavar="MS", help="jitter buffer latency, ms (default 60)"
    )
    parser.add_argument(
        "--rtcp-port", type=int, default=None, help="RTCP port (default: RTP port + 1; 0: no RTCP)"
    )


# -- stopping ----------------------------------------------------------------------------------------


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM while the block runs (previous handlers restored after)."""
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def emit_json(event: str, payload: dict[str, Any]) -> None:
    print(json.dumps({"event": event, **payload}, default=str), flush=True)


def wait_until(
    stop: threading.Event,
    duration_s: float | None,
    every_s: float = 0.0,
    tick: Callable[[], None] | None = None,
    done: Callable[[], bool] | None = None,
) -> None:
    """Return when ``stop`` is set, ``duration_s`` passed or ``done()`` says so; calls ``tick`` every
    ``every_s`` seconds."""
    start = time.monotonic()
    next_tick = start + every_s
    while not stop.wait(_POLL_S):
        now = time.monotonic()
        if duration_s is not None and now - start >= duration_s:
            return
        if done is not None and done():
            return
        if tick is not None and every_s > 0 and now >= next_tick:
            tick()
            next_tick = now + every_s


# -- commands ----------------------------------------------------------------------------------------


def cmd_rtp(args: argparse.Namespace) -> int:
    from vcstream.commands.options import engine_from_args
    from vcstream.convert import load_voice
    from vcstream.streaming.scheduler import BlockScheduler

    engine = engine_from_args(args)
    voice, notices = load_voice(engine, args.reference)
    for notice in notices:
        print(f"notice: {notice}", file=sys.stderr)
    bind, port = args.listen
    scheduler = BlockScheduler(engine)
    try:
        return _relay(args, engine, voice, scheduler, bind, port)
    finally:
        scheduler.close()


def _relay(
    args: argparse.Namespace,
    engine: Engine,
    voice: VoiceProfile,
    scheduler: BlockScheduler,
    bind: str,
    port: int,
) -> int:
    from vcstream.commands.options import session_settings
    from vcstream.transports.rtp_relay import RtpRelay

    relay = RtpRelay(
        engine,
        voice,
        port,
        args.send,
        scheduler=scheduler,
        codec=codec_from_args(args),
        latency_ms=args.latency,
        bind_address=bind,
        rtcp_port=args.rtcp_port,
        settings=session_settings(args, engine),
        max_backlog_s=args.max_backlog,
    )
    with stop_on_signals() as stop:
        relay.start()
        emit_json(
            "listening",
            {
                "listen": f"{bind}:{relay.port}",
                "rtcp_port": relay.receiver.rtcp_port,
                "send": f"{args.send[0]}:{args.send[1]}",
                "engine": engine.name,
                "block_ms": 1000 * relay.converter.block_size / relay.converter.io_rate,
                "algorithmic_latency_ms": 1000 * relay.converter.algorithmic_latency_s,
            },
        )
        try:
            wait_until(
                stop, args.duration, args.stats_interval, tick=lambda: emit_json("stats", relay.snapshot())
            )
        finally:
            final = relay.snapshot()  # before stopping: RTCP-derived figures end with the session
            relay.stop()
    emit_json("final", final)
    return 0


def cmd_rtp_send(args: argparse.Namespace) -> int:
    import numpy as np

    from vcstream.media import decode_file
    from vcstream.media.rtp import OPUS_RATE, NetworkSimulation, RtpOpusSender
    from vcstream.transports.pacing import push_in_real_time

    audio = decode_file(args.file, OPUS_RATE, channels=1)
    if args.loop > 1:
        audio = np.tile(audio, args.loop)
    netsim = None
    if args.netsim_delay is not None or args.netsim_drop:
        low, high = args.netsim_delay or (0, 0)
        netsim = NetworkSimulation(min_delay_ms=low, max_delay_ms=high, drop_pct=args.netsim_drop)
    host, port = args.to
    sender = RtpOpusSender(
        host, port, codec=codec_from_args(args), rtcp_port=args.rtcp_port, ssrc=args.ssrc, netsim=netsim
    )
    with stop_on_signals() as stop:
        sender.start()
        emit_json("sending", {"to": f"{sender.host}:{port}", "seconds": audio.shape[0] / OPUS_RATE})
        try:
            push_in_real_time(audio, OPUS_RATE, sender.push, chunk_s=args.chunk_ms / 1000, stop=stop)
            sender.drain()
        finally:
            stats = sender.stats()
            sender.stop()
    emit_json("final", stats)
    return 0


def cmd_rtp_receive(args: argparse.Namespace) -> int:
    import numpy as np

    from vcstream.media import SUPPORTED_FORMATS, encode_file
    from vcstream.media.rtp import OPUS_RATE, RtpOpusReceiver

    if args.output.suffix.lower().lstrip(".") not in SUPPORTED_FORMATS:  # fail now, not after receiving
        raise ConfigurationError(f"cannot write {args.output}: use one of .{', .'.join(SUPPORTED_FORMATS)}")
    chunks: list[Any] = []
    lock = threading.Lock()

    def collect(samples: Any) -> None:
        with lock:
            chunks.append(samples)

    bind, port = args.listen
    receiver = RtpOpusReceiver(
        port,
        collect,
        codec=codec_from_args(args),
        latency_ms=args.latency,
        bind_address=bind,
        rtcp_port=args.rtcp_port,
    )

    def idle() -> bool:
        last = receiver.last_audio_at
        return last is not None and time.monotonic() - last > args.idle_timeout

    with stop_on_signals() as stop:
        receiver.start()
        emit_json("listening", {"listen": f"{bind}:{receiver.port}", "rtcp_port": receiver.rtcp_port})
        try:
            wait_until(stop, args.duration, done=idle)
        finally:
            stats = receiver.stats()
            receiver.stop()
    with lock:
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if audio.shape[0] == 0:
        emit_json("final", {**stats, "output": None, "seconds": 0.0})
        raise InvalidAudioError("no audio was received; nothing written")
    encode_file(args.output, audio, OPUS_RATE)
    emit_json("final", {**stats, "output": str(args.output), "seconds": audio.shape[0] / OPUS_RATE})
    return 0


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from vcstream.bench.latency import run_latency_bench

    if args.transport != "rtp":
        raise ConfigurationError(f"transport {args.transport!r} has no latency bench yet")
    run_latency_bench(
        engines=args.engines.split(","),
        block_time=args.block_time,
        codec=codec_from_args(args),
        latency_ms=args.latency,
        seconds=args.seconds,
    )
    return 0


def cmd_bench_bandwidth(args: argparse.Namespace) -> int:
    from vcstream.bench.bandwidth import run_bandwidth_bench

    run_bandwidth_bench(seconds=args.seconds, speed=args.speed)
    return 0


# -- registration ------------------------------------------------------------------------------------


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    bench_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    relay = sub.add_parser(
        "rtp",
        help="converting relay: Opus/RTP in, voice conversion, Opus/RTP out",
        description="Receive Opus over RTP (with RTCP) on --listen, convert it with an engine session "
        "and send Opus over RTP to --send. Stops on SIGINT/SIGTERM or after --duration; prints "
        "JSON statistics.",
    )
    relay.add_argument("--listen", type=parse_listen, required=True, metavar="[ADDR:]PORT")
    relay.add_argument("--send", type=parse_endpoint, required=True, metavar="HOST:PORT")
    relay.add_argument("--reference", "-r", type=Path, required=True, help="1-30 s of the target voice")
    add_receive_options(relay)
    relay.add_argument(
        "--max-backlog",
        type=float,
        default=None,
        metavar="S",
        help="input the engine may fall behind by before the oldest is dropped (default: 2 blocks + 60 ms)",
    )
    relay.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    relay.add_argument(
        "--stats-interval", type=float, default=0.0, metavar="S", help="print statistics every S seconds"
    )
    add_codec_options(relay)
    add_engine_options(relay)
    relay.set_defaults(func=cmd_rtp)

    send = sub.add_parser("rtp-send", help="send an audio file as Opus/RTP in real time")
    send.add_argument("file", type=Path)
    send.add_argument("--to", type=parse_endpoint, required=True, metavar="HOST:PORT")
    send.add_argument("--rtcp-port", type=int, default=None, help="remote RTCP port (RTP port + 1; 0: none)")
    send.add_argument("--ssrc", type=int, default=None, help="fixed SSRC (default random)")
    send.add_argument("--loop", type=int, default=1, help="send the file this many times")
    send.add_argument("--chunk-ms", type=float, default=10.0, help="capture chunk size, ms (10)")
    send.add_argument(
        "--netsim-delay", type=parse_range, default=None, metavar="MIN:MAX", help="per-packet delay, ms"
    )
    send.add_argument("--netsim-drop", type=float, default=0.0, metavar="PCT", help="random packet loss")
    add_codec_options(send)
    send.set_defaults(func=cmd_rtp_send)

    receive = sub.add_parser("rtp-receive", help="receive Opus/RTP and write it to a file")
    receive.add_argument("--listen", type=parse_listen, required=True, metavar="[ADDR:]PORT")
    receive.add_argument("--output", "-o", type=Path, required=True, help=".wav .flac .ogg .opus .mp3")
    receive.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    receive.add_argument(
        "--idle-timeout",
        type=float,
        default=3.0,
        metavar="S",
        help="stop this long after the last audio (once some arrived; default 3)",
    )
    add_receive_options(receive)
    add_codec_options(receive)
    receive.set_defaults(func=cmd_rtp_receive)

    latency = bench_sub.add_parser(
        "latency", help="end-to-end latency through a transport, with its breakdown"
    )
    latency.add_argument("--transport", choices=("rtp",), default="rtp")
    latency.add_argument("--engines", default="passthrough,world")
    latency.add_argument("--block-time", type=float, default=0.1)
    latency.add_argument("--seconds", type=float, default=12.0, help="length of the marker signal")
    latency.add_argument("--latency", type=int, default=60, metavar="MS", help="jitter buffer latency")
    add_codec_options(latency)
    latency.set_defaults(func=cmd_bench_latency)

    bandwidth = bench_sub.add_parser("bandwidth", help="bytes on the wire per minute of speech")
    bandwidth.add_argument("--seconds", type=float, default=60.0, help="speech to send (scaled to a minute)")
    bandwidth.add_argument("--speed", type=float, default=8.0, help="times faster than real time")
    bandwidth.set_defaults(func=cmd_bench_bandwidth)
