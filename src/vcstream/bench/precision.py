"""`vcstream bench precision`: how far half precision (bf16/fp16 autocast) moves Seed-VC's output from
fp32, on the same random weights, input, voice and noise seed. Half precision needs CUDA: elsewhere
only fp32 runs, and the command says so."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vcstream.audio.types import Audio
from vcstream.bench.signals import flite_speech
from vcstream.engines.base import Engine

if TYPE_CHECKING:
    from vcstream.engines.seedvc.session import SeedVCEngine

BASELINE = "fp32"


@dataclass
class PrecisionRow:
    dtype: str
    seconds: float
    max_abs: float
    #: RMS of the difference over the RMS of the fp32 output
    rms_rel: float
    snr_db: float
    #: mean absolute difference of the log-mel spectrograms (natural log, the DiT's own features)
    mel_l1: float


def convert_blocks(engine: Engine, dtype: str, blocks: int, steps: int, seed: int) -> Audio:
    """``blocks`` streamed blocks of speech in ``dtype``, after one warm-up block run alone."""
    rate = engine.sample_rate
    voice = engine.prepare_voice(flite_speech("awb", rate), rate)
    session = engine.open_session(voice, engine.settings(dtype=dtype, seed=seed, diffusion_steps=steps))
    signal = np.resize(flite_speech("slt", rate), (blocks + 1) * session.block_size)
    size = session.block_size
    out = [session.process(signal[i * size : (i + 1) * size]) for i in range(blocks + 1)]
    return np.concatenate(out[1:])


def compare(dtype: str, reference: Audio, other: Audio, engine: SeedVCEngine) -> PrecisionRow:
    import torch

    rate = engine.sample_rate
    diff = other.astype(np.float64) - reference.astype(np.float64)
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    noise = float(np.sum(diff**2))
    with torch.inference_mode():
        pair = torch.from_numpy(np.stack([reference, other]).astype(np.float32)).to(engine.torch_device)
        mels = engine.models.mel(pair)
    return PrecisionRow(
        dtype=dtype,
        seconds=reference.shape[0] / rate,
        max_abs=float(np.max(np.abs(diff))),
        rms_rel=float(np.sqrt(noise / max(signal, 1e-20))),
        snr_db=float("inf") if noise == 0 else float(10 * np.log10(signal / noise)),
        mel_l1=float((mels[0] - mels[1]).abs().mean()),
    )


def run_precision_bench(
    device: str = "auto",
    dtypes: Sequence[str] = ("fp32", "bf16", "fp16"),
    size: str = "full",
    blocks: int = 4,
    steps: int = 10,
    seed: int = 0,
) -> list[PrecisionRow]:
    """Rows for fp32 (the baseline, against itself run twice: the run-to-run floor) and each half
    precision the device allows."""
    from vcstream.engines.seedvc.session import create_seedvc_engine

    engine = create_seedvc_engine(device=device, random_weights=True, seed=seed, size=size)
    reference = convert_blocks(engine, BASELINE, blocks, steps, seed)
    print(f"Seed-VC {engine.describe()['weights']} on {engine.device}: {blocks} blocks, {steps} steps")
    rows = [compare(BASELINE, reference, convert_blocks(engine, BASELINE, blocks, steps, seed), engine)]
    print_row(rows[-1], first=True)
    for dtype in dict.fromkeys(dtypes):
        if dtype == BASELINE:
            continue
        if not engine.on_gpu:
            print(f"{dtype:6} skipped: half precision needs a CUDA device (this run is on {engine.device})")
            continue
        rows.append(compare(dtype, reference, convert_blocks(engine, dtype, blocks, steps, seed), engine))
        print_row(rows[-1])
    return rows


def print_row(row: PrecisionRow, first: bool = False) -> None:
    if first:
        header = f"{'dtype':6} {'seconds':>8} {'max abs':>10} {'RMS rel':>10} {'SNR dB':>8} {'mel L1':>8}"
        print(f"{header}  (vs fp32)")
    print(
        f"{row.dtype:6} {row.seconds:8.2f} {row.max_abs:10.2e} {row.rms_rel:10.2e} {row.snr_db:8.1f} "
        f"{row.mel_l1:8.4f}",
        flush=True,
    )
