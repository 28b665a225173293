"""Intelligibility: a pocketsphinx transcript (its bundled en-us acoustic and language models) scored
against the expected text as word and character error rates. pocketsphinx is a weak recogniser (WER
0-27 % on clean flite speech): use it to compare a converted clip with its unconverted source."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from vcstream.audio.resample import resample
from vcstream.errors import ModelUnavailableError

RECOGNISER_RATE = 16000
_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


@dataclass(frozen=True)
class Intelligibility:
    transcript: str
    wer: float  #: word edit distance / words in the expected text
    cer: float  #: character edit distance / characters in the expected text (spaces included)


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: what a recogniser's output can be compared with."""
    return " ".join(_NOT_WORD.sub(" ", text.lower().replace("-", " ")).split())


def edit_distance(expected: list[str] | str, actual: list[str] | str) -> int:
    """Levenshtein distance (substitutions, insertions, deletions) between two token sequences."""
    previous = list(range(len(actual) + 1))
    for i, want in enumerate(expected, start=1):
        current = [i]
        for j, got in enumerate(actual, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (want != got)))
        previous = current
    return previous[-1]


def error_rates(expected: str, transcript: str) -> tuple[float, float]:
    """(WER, CER) of a transcript against the expected text, both normalised first."""
    want, got = normalise(expected), normalise(transcript)
    if not want:
        raise ValueError("the expected text has no words")
    wer = edit_distance(want.split(), got.split()) / len(want.split())
    cer = edit_distance(want, got) / len(want)
    return wer, cer


class Transcriber:
    """pocketsphinx with its bundled en-us model. ``transcribe`` is thread-safe (one clip at a time)."""

    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> Transcriber:
        try:
            from pocketsphinx import Decoder  # type: ignore[import-untyped]  # no type information
        except ImportError as exc:
            raise ModelUnavailableError(f"pocketsphinx is not available: {exc}") from exc
        return cls(Decoder(samprate=RECOGNISER_RATE, loglevel="FATAL"))

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        mono = resample(np.asarray(samples, dtype=np.float32), rate, RECOGNISER_RATE)
        pcm = np.clip(np.rint(mono * 32767.0), -32768, 32767).astype("<i2").tobytes()
        with self._lock:
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
            hypothesis = self._decoder.hyp()
        return str(hypothesis.hypstr) if hypothesis is not None else ""

    def score(self, samples: np.ndarray, rate: int, expected: str) -> Intelligibility:
        transcript = self.transcribe(samples, rate)
        wer, cer = error_rates(expected, transcript)
        return Intelligibility(transcript=transcript, wer=wer, cer=cer)
