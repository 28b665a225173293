"""File conversion: decode, run the live streaming path (or Seed-VC's offline inference), encode.

Sits above media/ (GStreamer) and streaming/ (engines), wiring them; it does no DSP of its own."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from vcstream.audio.reference import check_finite, prepare_reference
from vcstream.engines.base import Engine, VoiceProfile
from vcstream.engines.settings import SessionSettings
from vcstream.errors import ConfigurationError, InvalidAudioError
from vcstream.media import decode_file, encode_file
from vcstream.streaming.converter import StreamConverter, convert_stream

log = logging.getLogger(__name__)

#: the rate live transports run at (Opus); file conversion uses it too so files match live output
DEFAULT_IO_RATE = 48000


@dataclass
class ConversionReport:
    output: Path
    seconds: float
    wall_s: float
    delay_ms: float
    algorithmic_latency_ms: float
    notices: list[str] = field(default_factory=list)


def load_voice(engine: Engine, reference_path: Path) -> tuple[VoiceProfile, list[str]]:
    """Decode, validate and profile a reference recording for ``engine``."""
    raw = decode_file(reference_path, engine.sample_rate, channels=1)
    reference = prepare_reference(raw, engine.sample_rate)
    return engine.prepare_voice(reference.samples, reference.sample_rate), list(reference.notices)


def convert_file(
    engine: Engine,
    source: Path,
    reference: Path,
    output: Path,
    io_rate: int = DEFAULT_IO_RATE,
    offline: bool = False,
    settings: SessionSettings | None = None,
) -> ConversionReport:
    settings = settings or engine.defaults
    started = time.perf_counter()
    samples = decode_file(source, io_rate, channels=1)
    if samples.shape[0] == 0:
        raise InvalidAudioError(f"{source} holds no audio")
    check_finite(samples, str(source))
    voice, notices = load_voice(engine, reference)

    if offline:
        from vcstream.engines.seedvc import SeedVCEngine, SeedVCSettings, convert_offline

        if not isinstance(engine, SeedVCEngine):
            raise ConfigurationError("--offline is Seed-VC's whole-utterance inference: use --engine seedvc")
        from vcstream.audio.resample import resample

        at_engine_rate = resample(samples, io_rate, engine.sample_rate)
        chosen = engine.own_settings(settings, SeedVCSettings)
        converted = convert_offline(
            engine,
            voice,
            at_engine_rate,
            engine.sample_rate,
            diffusion_steps=chosen.diffusion_steps,
            cfg_rate=chosen.cfg_rate,
        )
        out = resample(converted, engine.sample_rate, io_rate)
        delay_ms = latency_ms = 0.0
    else:
        converter = StreamConverter(engine, voice, io_rate, settings)
        out = convert_stream(converter, samples)
        delay_ms = 1000 * converter.delay_samples / io_rate
        latency_ms = 1000 * converter.algorithmic_latency_s
        converter.close()

    encode_file(output, out, io_rate)
    return ConversionReport(
        output=output,
        seconds=samples.shape[0] / io_rate,
        wall_s=time.perf_counter() - started,
        delay_ms=delay_ms,
        algorithmic_latency_ms=latency_ms,
        notices=notices,
    )
