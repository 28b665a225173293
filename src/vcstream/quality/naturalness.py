"""Naturalness estimated by DNSMOS (P.835 SIG/BAK/OVRL and P.808), the ONNX models that ship in the
``speechmos`` package. Non-intrusive: it needs no clean reference. Its scale is a MOS estimate trained on
noisy real speech; compare figures from the same run (converted vs. unconverted), not across setups."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vcstream.audio.resample import resample
from vcstream.errors import ModelUnavailableError

DNSMOS_RATE = 16000


@dataclass(frozen=True)
class Naturalness:
    sig: float  #: speech signal quality, 1-5
    bak: float  #: background intrusiveness, 1-5 (higher: less noise)
    ovrl: float  #: overall quality, 1-5
    p808: float  #: P.808 overall MOS, 1-5


class NaturalnessRater:
    """DNSMOS on the CPU; one instance holds both ONNX sessions (speechmos' own ``run`` keeps them in a
    module global). ``rate`` is thread-safe (one clip at a time)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> NaturalnessRater:
        try:
            from speechmos import dnsmos  # type: ignore[import-untyped]  # no type information
        except ImportError as exc:
            raise ModelUnavailableError(f"DNSMOS is not available (pip install speechmos): {exc}") from exc
        models = Path(dnsmos.__file__).parent / "dnsmos_models"
        primary, p808 = models / "sig_bak_ovr.onnx", models / "model_v8.onnx"
        if not (primary.is_file() and p808.is_file()):
            raise ModelUnavailableError(f"DNSMOS models missing under {models}")
        return cls(dnsmos.DNSMOS(str(primary), str(p808)))

    def rate(self, samples: np.ndarray, rate: int) -> Naturalness:
        """Scores of mono float audio at any rate (shorter clips than DNSMOS' 9 s window are repeated)."""
        mono = np.clip(resample(np.asarray(samples, dtype=np.float32), rate, DNSMOS_RATE), -1.0, 1.0)
        if mono.ndim != 1 or mono.shape[0] < DNSMOS_RATE // 2:
            raise ValueError("DNSMOS needs at least 0.5 s of mono audio")
        with self._lock:
            scores = self._model(mono, DNSMOS_RATE, False)
        return Naturalness(
            sig=float(scores["sig_mos"]),
            bak=float(scores["bak_mos"]),
            ovrl=float(scores["ovrl_mos"]),
            p808=float(scores["p808_mos"]),
        )
