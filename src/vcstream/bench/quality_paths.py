"""The paths a quality benchmark sends audio through: ``file`` is the streaming converter exactly as
``vcstream convert`` runs it; ``rtp`` and ``webrtc`` carry the audio over a real network call
(``vcstream.bench.quality_live``, loaded only when asked for: the file path needs none of it)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from vcstream.audio.types import Audio
from vcstream.convert import DEFAULT_IO_RATE, convert_file
from vcstream.engines.registry import EngineOptions, create_engine
from vcstream.errors import ConfigurationError
from vcstream.media import decode_file

TRANSPORTS = ("file", "rtp", "webrtc")


def convert_via(
    transport: str,
    engine: str,
    source: Path,
    reference: Path,
    loss_pct: float,
    workdir: Path,
    *,
    options: EngineOptions | None = None,
    offline: bool = False,
) -> tuple[Audio, int]:
    """Convert ``source`` toward ``reference`` with ``engine`` over ``transport``; the converted audio
    (float32 mono) and its rate. ``options`` (how to load the engine) and ``offline`` (Seed-VC's
    whole-utterance inference) apply to the file path only."""
    if transport == "file":
        if loss_pct:
            raise ConfigurationError("--loss needs a network transport (rtp or webrtc), not file")
        return convert_as_file(engine, source, reference, workdir, options=options, offline=offline)
    if transport not in TRANSPORTS:
        raise ConfigurationError(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")
    if offline:
        raise ConfigurationError("offline conversion is a file path, not a live transport")
    try:
        quality_live = importlib.import_module("vcstream.bench.quality_live")
    except ImportError as exc:
        raise ConfigurationError(
            f"the {transport} path needs vcstream.bench.quality_live, which is not installed here ({exc})"
        ) from exc
    convert = quality_live.convert_over_rtp if transport == "rtp" else quality_live.convert_over_webrtc
    samples, rate = convert(engine, source, reference, loss_pct, workdir)
    return np.asarray(samples, dtype=np.float32), int(rate)


def convert_as_file(
    engine: str,
    source: Path,
    reference: Path,
    workdir: Path,
    *,
    options: EngineOptions | None = None,
    offline: bool = False,
) -> tuple[Audio, int]:
    """``vcstream convert`` itself: the converted WAV is kept in ``workdir`` for listening."""
    converter = create_engine(engine, options)
    mode = "offline" if offline else "stream"
    output = workdir / f"{source.stem}-to-{reference.stem}-{engine}-{mode}.wav"
    output.parent.mkdir(parents=True, exist_ok=True)
    convert_file(converter, source, reference, output, io_rate=DEFAULT_IO_RATE, offline=offline)
    return decode_file(output, DEFAULT_IO_RATE, channels=1), DEFAULT_IO_RATE
