"""Whole-utterance conversion the way Seed-VC's own ``inference.py`` does it: the quality reference the
streaming path is compared against.

XLS-R sees the source in 30 s pieces (5 s overlap, the overlap's features taken from the earlier
piece); the length regulator maps the features to the source's mel length (times ``length_adjust``);
the DiT generates in windows of at most 30 s including the prompt, consecutive windows overlapping by
16 frames and joined with a cos² crossfade.
"""

from __future__ import annotations

import numpy as np
import torch

from vcstream.audio.resample import resample
from vcstream.audio.types import Audio
from vcstream.engines.base import VoiceProfile
from vcstream.engines.seedvc.model import CONTENT_FRAME_RATE, CONTENT_RATE
from vcstream.engines.seedvc.session import DTYPES, SeedVCEngine
from vcstream.engines.seedvc.settings import MAX_REFERENCE_S
from vcstream.errors import ConfigurationError, InvalidAudioError

#: XLS-R input piece and overlap (seconds), as inference.py
CONTENT_PIECE_S, CONTENT_OVERLAP_S = 30, 5
#: DiT window (seconds of mel frames, prompt included) and overlap between windows (frames)
DIT_WINDOW_S, DIT_OVERLAP_FRAMES = 30, 16


def _content_features(engine: SeedVCEngine, wav16: Audio) -> torch.Tensor:
    """XLS-R features of a source of any length, (1, frames, 1024)."""
    m = engine.models
    signal = torch.from_numpy(np.ascontiguousarray(wav16)).unsqueeze(0).to(engine.torch_device)
    piece, overlap = CONTENT_PIECE_S * CONTENT_RATE, CONTENT_OVERLAP_S * CONTENT_RATE
    if signal.shape[-1] <= piece:
        return m.content(signal)
    parts = [m.content(signal[:, :piece])]
    start = piece
    while start < signal.shape[-1]:
        # Each later piece re-reads the last 5 s before it as context and drops their features.
        chunk = signal[:, start - overlap : start - overlap + piece]
        parts.append(m.content(chunk)[:, CONTENT_OVERLAP_S * CONTENT_FRAME_RATE :])
        start += chunk.shape[-1] - overlap
    return torch.cat(parts, dim=1)


def _crossfade(previous: np.ndarray, following: np.ndarray) -> np.ndarray:
    """Fade ``previous`` (the last window's overlap) out over the head of ``following``."""
    n = min(previous.shape[0], following.shape[0])
    overlap = previous.shape[0]
    fade_out = np.cos(np.linspace(0.0, np.pi / 2, overlap)) ** 2
    fade_in = np.cos(np.linspace(np.pi / 2, 0.0, overlap)) ** 2
    out = following.copy()
    out[:n] = following[:n] * fade_in[:n] + previous[:n] * fade_out[:n]
    return out


@torch.inference_mode()
def convert_offline(
    engine: SeedVCEngine,
    voice: VoiceProfile,
    samples: Audio,
    sample_rate: int,
    diffusion_steps: int = 30,
    cfg_rate: float = 0.7,
    length_adjust: float = 1.0,
    prompt_length: float | None = None,
    seed: int = 0,
    dtype: str = "fp32",
) -> Audio:
    """Convert a whole mono signal to ``voice``; returns audio at the engine's rate (22.05 kHz),
    exactly ``round(duration * 22050 * length_adjust)`` samples long.

    Defaults follow inference.py: 30 diffusion steps, guidance 0.7, the reference's first 25 s as the
    prompt (``prompt_length`` shortens it). ``seed`` fixes the diffusion and vocoder noise."""
    if diffusion_steps < 1 or cfg_rate < 0 or length_adjust <= 0:
        raise ConfigurationError("need diffusion_steps >= 1, cfg_rate >= 0 and length_adjust > 0")
    if dtype not in DTYPES or (dtype != "fp32" and engine.torch_device.type != "cuda"):
        raise ConfigurationError(f"dtype {dtype!r} not available on {engine.torch_device.type}; use fp32")
    m = engine.models
    hop = m.hop_size
    source = resample(np.asarray(samples, dtype=np.float32), sample_rate, engine.sample_rate)
    if source.shape[0] < 2 * hop or not np.all(np.isfinite(source)):
        raise InvalidAudioError("the source must be finite and longer than two mel frames")
    prompt = engine.prompt_features(voice, prompt_length or MAX_REFERENCE_S)
    out_len = round(source.shape[0] * length_adjust)

    with engine.autocast(dtype):
        content = _content_features(engine, resample(source, engine.sample_rate, CONTENT_RATE))
        mel_frames = m.mel(torch.from_numpy(source).unsqueeze(0).to(engine.torch_device)).shape[-1]
        target = torch.tensor([int(mel_frames * length_adjust)], device=engine.torch_device)
        condition = m.length_regulator(content, ylens=target, n_quantizers=3, f0=None)[0].float()

    window = m.sample_rate // hop * DIT_WINDOW_S - prompt.frames
    if window <= DIT_OVERLAP_FRAMES:
        raise ConfigurationError("prompt too long for the DiT window: use a shorter prompt_length")
    generator = torch.Generator(device=engine.torch_device).manual_seed(seed)
    vocoder_seeds = np.random.default_rng(seed)
    overlap = DIT_OVERLAP_FRAMES * hop
    pieces: list[np.ndarray] = []
    previous: np.ndarray | None = None
    done, total = 0, condition.shape[1]
    while done < total:
        chunk = condition[:, done : done + window]
        last = done + window >= total
        noise = torch.randn(
            (1, m.mel_settings.num_mels, prompt.frames + chunk.shape[1]),
            generator=generator,
            device=engine.torch_device,
        )
        with engine.autocast(dtype):
            mel = engine.generate([prompt], chunk, [noise], diffusion_steps, cfg_rate)
        wave = m.vocode(mel.float(), int(vocoder_seeds.integers(2**62)))[0].float().cpu().numpy()
        body = wave if last else wave[:-overlap]
        pieces.append(body if previous is None else _crossfade(previous, body))
        if last:
            break
        previous = wave[-overlap:]
        done += chunk.shape[1] - DIT_OVERLAP_FRAMES
    out = np.concatenate(pieces).astype(np.float32)
    if out.shape[0] < out_len:
        out = np.concatenate([out, np.zeros(out_len - out.shape[0], dtype=np.float32)])
    return np.ascontiguousarray(out[:out_len])
