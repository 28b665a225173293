"""The live paths of ``vcstream bench quality`` on the passthrough engine: a flite sentence through the
RTP relay and through a WebRTC call to ``vcstream serve`` (real processes, real sockets), clean and,
for RTP, with 10 % random loss each way between two network namespaces. What comes back must be the
sentence: its length within 10 %, its energy envelope following the source's."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import Speech, write_wav
from netns import require_netns
from vcstream.bench import netns as bench_netns
from vcstream.bench.netns import NamespacesUnavailable
from vcstream.bench.quality_live import convert_over_rtp, convert_over_webrtc
from vcstream.media import decode_file

SENTENCE = "Bring the blue box and the red cup to the kitchen table, please."
Path_ = Callable[[str, Path, Path, float, Path], tuple[np.ndarray, int]]


@pytest.fixture
def source(flite_speech: Speech, tmp_path: Path) -> Path:
    return write_wav(tmp_path / "source.wav", *flite_speech("slt", SENTENCE))


@pytest.fixture
def reference(flite_speech: Speech, tmp_path: Path) -> Path:
    return write_wav(tmp_path / "reference.wav", *flite_speech("awb"))


def envelope_correlation(a: np.ndarray, b: np.ndarray, rate: int) -> float:
    """Pearson correlation of 10 ms RMS envelopes over the common length."""
    frame = rate // 100
    n = min(a.shape[0], b.shape[0]) // frame
    ea, eb = (
        np.sqrt(np.mean(x[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1)) for x in (a, b)
    )
    return float(np.corrcoef(ea, eb)[0, 1])


def run_path(
    convert: Path_, source: Path, reference: Path, loss_pct: float, workdir: Path
) -> tuple[float, float]:
    """(length ratio, envelope correlation) of what ``convert`` returned against the source."""
    started = time.monotonic()
    converted, rate = convert("passthrough", source, reference, loss_pct, workdir)
    took = time.monotonic() - started
    assert converted.dtype == np.float32 and converted.ndim == 1
    original = decode_file(source, rate)
    ratio = converted.shape[0] / original.shape[0]
    correlation = envelope_correlation(original, converted, rate)
    observed = {path.name: json.loads(path.read_text()) for path in workdir.glob("*-path.json")}
    print(
        f"\n{convert.__name__} loss {loss_pct:g} %: {took:.1f} s for {original.shape[0] / rate:.1f} s of "
        f"source; length x{ratio:.3f}, envelope correlation {correlation:.3f}; {observed}"
    )
    return ratio, correlation


@pytest.mark.parametrize("convert", [convert_over_rtp, convert_over_webrtc], ids=["rtp", "webrtc"])
def test_a_clean_path_returns_the_sentence(
    convert: Path_, source: Path, reference: Path, tmp_path: Path
) -> None:
    ratio, correlation = run_path(convert, source, reference, 0, tmp_path / "work")
    assert abs(ratio - 1) <= 0.1
    assert correlation > 0.9


def test_rtp_with_ten_percent_loss_each_way_still_returns_the_sentence(
    source: Path, reference: Path, tmp_path: Path
) -> None:
    require_netns()
    ratio, correlation = run_path(convert_over_rtp, source, reference, 10, tmp_path / "work")
    observed = json.loads((tmp_path / "work" / "rtp-path.json").read_text())
    # the kernel dropped packets both ways (10 % of ~185 per leg: 18.5 +/- 4.1), and each leg's
    # receiver counted about as many lost
    assert 5 <= observed["dropped_to_converter"] <= 40
    assert 5 <= observed["dropped_to_caller"] <= 40
    assert 3 < observed["lost_pct_to_relay"] < 20
    assert 3 < observed["lost_pct_from_relay"] < 20
    assert abs(ratio - 1) <= 0.1
    assert correlation > 0.6  # concealment fills the holes: still the sentence, if damaged


def test_loss_without_namespaces_is_refused_clearly(
    source: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_netns.os, "geteuid", lambda: 1000)
    with pytest.raises(NamespacesUnavailable, match="need root"):
        convert_over_rtp("passthrough", source, reference, 5, tmp_path / "work")
