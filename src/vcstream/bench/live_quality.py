"""What live quality estimation costs: CPU seconds of its worker thread per minute of call, against the
CPU engine converting the same call (the baseline, measured in the same run, interleaved).

A call is played through a ``CallQuality`` tap as the media threads would (20 ms at a time, the
caller's speech in, the converted speech out), one second at a time with the worker caught up before
the next (so nothing is dropped and every window is estimated); the worker counts its own CPU time
(``time.thread_time``). The baseline converts the same audio with the WORLD engine and counts the
converting thread's CPU time. Rounds alternate, so load from others sharing the cores hits both.

    python -m vcstream.bench.live_quality [--seconds 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from vcstream.audio.types import Audio
from vcstream.audio.wav import pcm16_wav
from vcstream.bench.signals import flite_speech
from vcstream.engines.world import WorldEngine
from vcstream.quality.live import HANDOFF_S, LiveQualityWorker
from vcstream.streaming.converter import StreamConverter

RATE = 16000


@dataclass(frozen=True)
class LiveQualityCost:
    call_s: float
    #: worker CPU seconds per call-minute (loading excluded), per round
    quality_cpu_per_min: list[float]
    #: WORLD's converting thread CPU seconds per call-minute, per round (the baseline)
    engine_cpu_per_min: list[float]
    estimates: int
    dropped: int
    load_cpu_s: float

    @property
    def ratio(self) -> float:
        return float(np.median(self.quality_cpu_per_min) / np.median(self.engine_cpu_per_min))

    def report(self) -> str:
        q, e = np.median(self.quality_cpu_per_min), np.median(self.engine_cpu_per_min)
        return (
            f"live quality worker: {q:.2f} CPU s per call-minute ({100 * q / 60:.1f}% of a core while "
            f"talking; rounds {', '.join(f'{v:.2f}' for v in self.quality_cpu_per_min)}), "
            f"{self.estimates} estimates, {self.dropped} pieces dropped, "
            f"CAM++ load {self.load_cpu_s:.1f} CPU s once\n"
            f"baseline WORLD conversion: {e:.2f} CPU s per call-minute "
            f"(rounds {', '.join(f'{v:.2f}' for v in self.engine_cpu_per_min)})\n"
            f"ratio quality / WORLD: {self.ratio:.2f} (medians of {len(self.quality_cpu_per_min)} "
            f"interleaved rounds of {self.call_s:.0f} s)"
        )


def _quality_round(worker: LiveQualityWorker, caller: Audio, converted: Audio) -> float:
    """Worker CPU seconds for one call of ``converted.shape[0]`` samples."""
    call = worker.open_call("world")
    call.set_voice("bench-voice")
    before = worker.stats().cpu_s
    chunk, second = RATE // 50, round(HANDOFF_S * RATE)
    for start in range(0, converted.shape[0] - second + 1, second):
        for at in range(start, start + second, chunk):
            call.on_input(caller[at : at + chunk], RATE)
            call.on_output(converted[at : at + chunk], RATE)
        while not worker.idle():
            time.sleep(0.005)
    call.close()
    return worker.stats().cpu_s - before


def _engine_round(engine: WorldEngine, reference: Audio, caller: Audio) -> float:
    """The converting thread's CPU seconds for the same call through WORLD."""
    converter = StreamConverter(engine, engine.prepare_voice(reference, RATE), RATE)
    chunk = RATE // 50
    started = time.thread_time()
    for at in range(0, caller.shape[0] - chunk + 1, chunk):
        converter.push(caller[at : at + chunk])
    spent = time.thread_time() - started
    converter.close()
    return spent


def measure(call_s: float = 60.0, rounds: int = 3) -> LiveQualityCost:
    caller = np.resize(flite_speech("awb", RATE), round(call_s * RATE)).astype(np.float32)
    reference = flite_speech("slt", RATE)
    engine = WorldEngine()
    converted = StreamConverter(engine, engine.prepare_voice(reference, RATE), RATE).push(caller)
    converted = np.resize(converted, caller.shape[0]).astype(np.float32)
    worker = LiveQualityWorker()
    worker.add_reference("bench-voice", pcm16_wav(reference, RATE))
    try:
        warm = worker.open_call("world")  # loads CAM++ (counted apart) and embeds the voice once
        warm.close()
        while worker.stats().load_cpu_s == 0.0 and worker.unavailable is None:
            time.sleep(0.05)
        if worker.unavailable is not None:
            raise RuntimeError(f"CAM++ is not available: {worker.unavailable}")
        quality, baseline = [], []
        for _ in range(rounds):
            quality.append(60 * _quality_round(worker, caller, converted) / call_s)
            baseline.append(60 * _engine_round(engine, reference, caller) / call_s)
        stats = worker.stats()
        return LiveQualityCost(call_s, quality, baseline, stats.estimates, stats.dropped, stats.load_cpu_s)
    finally:
        worker.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each simulated call")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each")
    args = parser.parse_args(argv)
    print(measure(args.seconds, args.rounds).report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
