"""`vcstream bench engines`: milliseconds per block, real-time factor and streams per core (or GPU),
per engine and block size, with passthrough measured in the same run as the baseline."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vcstream.bench.signals import flite_speech
from vcstream.engines.base import Engine
from vcstream.engines.registry import EngineOptions, create_engine
from vcstream.engines.settings import SessionSettings
from vcstream.errors import ConfigurationError, ModelUnavailableError
from vcstream.streaming.converter import StreamConverter

log = logging.getLogger(__name__)


@dataclass
class BlockTiming:
    engine: str
    variant: str
    block_time: float
    blocks: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    #: CPU seconds (all threads of the process) per block: what one stream costs a core
    cpu_ms: float

    @property
    def rtf(self) -> float:
        """Wall-clock real-time factor (latency view)."""
        return self.mean_ms / (1000 * self.block_time)

    @property
    def cpu_rtf(self) -> float:
        """Share of one core a stream needs (capacity view; independent of thread count)."""
        return self.cpu_ms / (1000 * self.block_time)


def time_stream(
    engine: Engine, settings: SessionSettings, blocks: int, warmup: int = 2, io_rate: int = 48000
) -> tuple[list[float], list[float]]:
    """Per-block wall time (s) of one live stream at ``io_rate`` fed with speech, one block per push
    (resampling in and out included), after ``warmup`` blocks. Returns (wall s, CPU s) per block."""
    reference = flite_speech("awb", engine.sample_rate)
    voice = engine.prepare_voice(reference, engine.sample_rate)
    converter = StreamConverter(engine, voice, io_rate, settings)
    size = converter.block_size
    signal = np.resize(flite_speech("slt", io_rate), (blocks + warmup + 1) * size)  # loops the sentence
    wall, cpu = [], []
    sync = _device_sync(engine)
    for i in range(blocks + warmup + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        converter.push(signal[i * size : (i + 1) * size])
        sync()
        if i > warmup:  # the very first push only fills the resampler's window
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    converter.close()
    return wall, cpu


def _device_sync(engine: Engine) -> Any:
    device = str(engine.describe().get("device", "cpu"))
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def summarise(
    engine: str, variant: str, block_time: float, times: tuple[list[float], list[float]]
) -> BlockTiming:
    ms = np.array(times[0]) * 1000
    return BlockTiming(
        engine,
        variant,
        block_time,
        len(ms),
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 95)),
        float(ms.mean()),
        float(np.mean(times[1]) * 1000),
    )


def load_seedvc(
    device: str, model_cache: Path | None, size: str = "full", compile_mode: str = "off"
) -> tuple[Engine, str]:
    """Real weights when present, else the full-size model with random weights (same compute); the
    reduced model (random weights) when ``size`` says so."""
    options = EngineOptions(device=device, model_cache=model_cache, compile_mode=compile_mode)
    if size == "full":
        try:
            return create_engine("seedvc", options), "weights"
        except ModelUnavailableError:
            log.warning("Seed-VC weights not found: timing the full-size model with RANDOM weights")
    options = replace(options, random_weights=True, model_size=size)
    return create_engine("seedvc", options), "random-weights" if size == "full" else f"random {size}"


def run_engine_bench(
    engines: Sequence[str],
    block_times: Sequence[float],
    blocks: int = 50,
    seedvc_blocks: int = 4,
    device: str = "auto",
    dtypes: Sequence[str] = ("fp32", "bf16", "fp16"),
    model_cache: Path | None = None,
    threads: int = 1,
    seedvc_size: str = "full",
    compile_mode: str = "off",
) -> list[BlockTiming]:
    if "seedvc" in engines:
        import torch

        torch.set_num_threads(threads)
    results: list[BlockTiming] = []
    order = ["passthrough", *[e for e in engines if e != "passthrough"]]  # baseline always first
    for name in order:
        if name == "seedvc":
            engine, weights = load_seedvc(device, model_cache, seedvc_size, compile_mode)
            on_gpu = str(engine.describe().get("device", "cpu")).startswith("cuda")
            for dtype in dtypes if on_gpu else ("fp32",):
                for bt in block_times:
                    try:
                        settings = engine.settings(block_time=bt, dtype=dtype)
                        times = time_stream(engine, settings, blocks if on_gpu else seedvc_blocks)
                    except ConfigurationError as exc:
                        print(f"seedvc {dtype} skipped: {exc}")
                        break
                    results.append(
                        summarise(name, f"{engine.describe()['device']} {dtype} {weights}", bt, times)
                    )
                    print_row(results[-1], results)
        else:
            engine = create_engine(name)
            for bt in block_times:
                results.append(
                    summarise(name, "cpu", bt, time_stream(engine, engine.settings(block_time=bt), blocks))
                )
                print_row(results[-1], results)
    return results


def print_row(row: BlockTiming, results: Sequence[BlockTiming]) -> None:
    if len(results) == 1:
        print(
            f"{'engine':12} {'variant':28} {'block':>6} {'n':>4} {'p50 ms':>9} {'p95 ms':>9} "
            f"{'RTF':>8} {'CPU RTF':>8} {'streams/core':>12} {'x passthrough':>14}"
        )
    base = next((r for r in results if r.engine == "passthrough" and r.block_time == row.block_time), None)
    ratio = f"{row.mean_ms / base.mean_ms:14.1f}" if base and base.mean_ms > 0 else f"{'-':>14}"
    capacity = 1 / row.cpu_rtf if row.cpu_rtf > 0 else float("inf")
    print(
        f"{row.engine:12} {row.variant:28} {row.block_time:6.2f} {row.blocks:4d} {row.p50_ms:9.3f} "
        f"{row.p95_ms:9.3f} {row.rtf:8.4f} {row.cpu_rtf:8.4f} {capacity:12.2f} {ratio}",
        flush=True,
    )
