"""Shared fixtures: synthetic test speech from Debian's flite (distinct voices, clear rights), signal
measures, Chromium, and a throwaway PostgreSQL cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from postgres_harness import PostgresMissing, created_database, running_postgres

#: the type of the ``flite_speech`` fixture
Speech = Callable[..., tuple[np.ndarray, int]]

SENTENCES = {
    "slt": "The quick brown fox jumps over the lazy dog while the birds sing in the morning light.",
    "rms": "Please call Stella and ask her to bring these things with her from the store.",
    "awb": "A rainbow is a division of white light into many beautiful colors seen in the sky.",
    "kal16": "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack.",
}


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        raw = w.readframes(w.getnframes())
        data = np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels())
        return data, w.getframerate()


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    pcm = np.clip(samples, -1, 1)
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((pcm * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def flite_speech(speech_dir: Path) -> Speech:
    """``flite_speech(voice="slt", text=None, rate=16000)`` -> (mono float32, rate)."""
    if shutil.which("flite") is None:
        pytest.fail("flite is not installed; run scripts/setup.sh")
    cache: dict[tuple[str, str | None, int], tuple[np.ndarray, int]] = {}

    def make(voice: str = "slt", text: str | None = None, rate: int = 16000) -> tuple[np.ndarray, int]:
        key = (voice, text, rate)
        if key not in cache:
            path = speech_dir / f"{voice}-{abs(hash(text))}.wav"
            subprocess.run(
                ["flite", "-voice", voice, "-t", text or SENTENCES[voice], "-o", str(path)], check=True
            )
            data, native = read_wav(path)
            if native != rate:
                g = np.gcd(native, rate)
                data = resample_poly(data, rate // g, native // g).astype(np.float32)
            cache[key] = (data.astype(np.float32), rate)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def flite_wav(speech_dir: Path, flite_speech: Speech) -> Callable[..., Path]:
    """``flite_wav(voice="slt", rate=16000)`` -> path of a 16-bit wav file of that voice."""

    def make(voice: str = "slt", rate: int = 16000) -> Path:
        path = speech_dir / f"{voice}-{rate}.wav"
        if not path.exists():
            data, _ = flite_speech(voice, None, rate)
            write_wav(path, data, rate)
        return path

    return make


def vcstream_argv(*args: object) -> list[str]:
    """The command line running ``vcstream ARGS...`` with this interpreter (the venv's package)."""
    return [sys.executable, "-m", "vcstream.cli", *map(str, args)]


def median_f0(samples: np.ndarray, rate: int) -> float:
    """Median F0 (Hz) of voiced frames, by WORLD's harvest (robust on synthetic speech)."""
    import pyworld

    x = samples.astype(np.float64)
    f0, _ = pyworld.harvest(x, rate, f0_floor=60.0, f0_ceil=500.0, frame_period=10.0)
    voiced = f0[f0 > 0]
    return float(np.median(voiced)) if voiced.size else 0.0


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = reference - estimate
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum(noise**2), 1e-20)))


@pytest.fixture(scope="session")
def seedvc_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Hugging Face cache holding full-size Seed-VC weights in the published checkpoint layout
    (random values, seed 0: the same model as ``build_random("cpu", seed=0)``), made once per run so
    that every test loading Seed-VC goes through the real loader with the hub offline (~0.9 GB)."""
    from vcstream.engines.seedvc.checkpoints import save_random_checkpoints
    from vcstream.engines.seedvc.model import build_random

    cache = tmp_path_factory.mktemp("seedvc-hub-cache")
    save_random_checkpoints(build_random("cpu", seed=0), cache)
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, which the browser tests drive through Playwright."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (see STACK-NOTES)")
    return CHROMIUM


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (tests/postgres_harness.py); yields the URL of its ``postgres``
    database. Tests take a database of their own: ``postgres_url``."""
    try:
        with running_postgres() as url:
            yield url
    except PostgresMissing as missing:
        pytest.fail(str(missing))


@pytest.fixture
def postgres_url(postgres_cluster: str) -> Iterator[str]:
    """An empty database of its own on the shared cluster, dropped afterwards."""
    with created_database(postgres_cluster) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes it runs twice: on a SQLite file of its own and on an empty PostgreSQL
    database (test_tenant_isolation overrides it with its own pair)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vcstream.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
