"""``vcstream bench quality`` end to end on the file path: a male flite voice converted toward itself and
toward a female voice by the passthrough and world engines, scored beside its baselines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import Speech, vcstream_argv, write_wav
from vcstream.bench.quality_paths import convert_via
from vcstream.errors import ConfigurationError

#: short sentences keep the run CI-sized (pocketsphinx dominates its cost)
SOURCE_TEXT = "Please call Stella and ask her to bring these things."
REFERENCE_TEXT = "A rainbow is a division of white light into many colors."
ROW_FIELDS = {
    "source", "reference", "engine", "transport", "available", "unavailable", "wall_s", "seconds",
    "similarity_to_reference", "similarity_to_source", "dnsmos", "transcript", "wer", "cer", "f0",
}  # fmt: skip


@pytest.fixture(scope="module")
def voices(flite_speech: Speech, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("quality-voices")
    male = write_wav(folder / "rms.wav", *flite_speech("rms", SOURCE_TEXT))
    female = write_wav(folder / "slt.wav", *flite_speech("slt", REFERENCE_TEXT))
    return male, female


def test_command_scores_engines_beside_baselines(voices: tuple[Path, Path], tmp_path: Path) -> None:
    male, female = voices
    results, png = tmp_path / "quality.json", tmp_path / "quality.png"
    empty_cache = tmp_path / "no-weights"
    empty_cache.mkdir()
    args: list[object] = ["bench", "quality", "--source", male, "--reference", male, female]
    args += ["--engine", "passthrough", "world", "--transport", "file", "--text", SOURCE_TEXT]
    args += ["--model-cache", empty_cache, "--json", results, "--plot", png]
    done = subprocess.run(vcstream_argv(*args), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world/file" in done.stdout and "source (unconverted)" in done.stdout
    report = json.loads(results.read_text())
    assert report["transport"] == "file" and report["expected_texts"] == {"rms.wav": SOURCE_TEXT}
    rows = {(row["reference"], row["engine"]): row for row in report["rows"]}
    assert len(rows) == len(report["rows"]) == 2 * 5  # per reference: source, reference, 2 engines, offline
    for row in report["rows"]:
        assert set(row) == ROW_FIELDS
        if row["engine"] == "seedvc offline":
            assert not row["available"] and row["unavailable"].startswith("not available")
            assert row["similarity_to_reference"] is None
            continue
        assert row["available"], row
        assert set(row["dnsmos"]) == {"sig", "bak", "ovrl", "p808"}
        assert set(row["f0"]) == {"median_hz", "iqr_hz", "voiced_ratio"}
        assert (row["wer"] is None) == (row["engine"] == "reference")

    def similarity(reference: str, engine: str) -> float:
        return float(rows[reference, engine]["similarity_to_reference"])

    # a file against itself is the most similar; another voice scores clearly lower
    assert similarity("rms.wav", "source (unconverted)") == pytest.approx(1.0, abs=1e-4)
    assert similarity("rms.wav", "passthrough") > 0.97
    assert similarity("slt.wav", "source (unconverted)") < 0.8
    assert similarity("slt.wav", "passthrough") < similarity("rms.wav", "passthrough") - 0.2
    # passthrough changes nothing a listener would notice; world moves the pitch toward the reference
    untouched, passed = rows["slt.wav", "source (unconverted)"], rows["slt.wav", "passthrough"]
    assert passed["wer"] == pytest.approx(untouched["wer"], abs=0.11)
    assert abs(passed["dnsmos"]["ovrl"] - untouched["dnsmos"]["ovrl"]) < 0.3
    source_f0 = untouched["f0"]["median_hz"]
    target_f0 = rows["slt.wav", "reference"]["f0"]["median_hz"]
    world_f0 = rows["slt.wav", "world"]["f0"]["median_hz"]
    assert abs(world_f0 - target_f0) < 0.5 * abs(source_f0 - target_f0), (source_f0, world_f0, target_f0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_file_path_refuses_loss_and_unknown_transports(voices: tuple[Path, Path], tmp_path: Path) -> None:
    male, female = voices
    with pytest.raises(ConfigurationError, match="network transport"):
        convert_via("file", "passthrough", male, female, 5.0, tmp_path)
    with pytest.raises(ConfigurationError, match="unknown transport"):
        convert_via("carrier-pigeon", "passthrough", male, female, 0.0, tmp_path)
