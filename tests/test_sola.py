"""SOLA splicer: continuity on consistent frames, and the offset search."""

from __future__ import annotations

import numpy as np
import pytest

from vcstream.audio.sola import SolaSplicer

BLOCK, CROSSFADE, SEARCH = 441 * 9, 441 * 2, 441


def frames_of(signal: np.ndarray, count: int, starts: list[int]) -> list[np.ndarray]:
    size = BLOCK + CROSSFADE + SEARCH
    return [signal[s : s + size] for s in starts[:count]]


def test_overlapping_chunks_of_a_sine_splice_into_the_same_sine() -> None:
    t = np.arange(BLOCK * 12) / 22050
    sine = (0.5 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    splicer = SolaSplicer(BLOCK, CROSSFADE, SEARCH)
    # Frame k covers the signal from k*BLOCK on: each frame's head repeats the previous frame's tail.
    out = np.concatenate([splicer.splice(f) for f in frames_of(sine, 10, [k * BLOCK for k in range(10)])])
    assert out.shape == (10 * BLOCK,)
    # The first block fades in from silence; everything after is the sine itself.
    np.testing.assert_allclose(out[CROSSFADE:], sine[CROSSFADE : 10 * BLOCK], atol=1e-5)
    assert np.max(np.abs(np.diff(out[CROSSFADE:]))) < 2 * np.pi * 220 / 22050 * 0.5 + 1e-4


@pytest.mark.parametrize("shift", [0, 1, 57, 300, SEARCH])
def test_offset_search_finds_a_known_shift(shift: int) -> None:
    noise = np.random.default_rng(1).standard_normal(BLOCK * 4).astype(np.float32)
    splicer = SolaSplicer(BLOCK, CROSSFADE, SEARCH)
    splicer.splice(noise[: splicer.frame_size])
    assert splicer.last_offset == 0  # the tail starts as silence: no preference
    # The next frame starts `shift` samples before where the kept tail lies in the signal.
    second = noise[BLOCK - shift : BLOCK - shift + splicer.frame_size]
    block = splicer.splice(second)
    assert splicer.last_offset == shift
    # Aligned, the crossfade joins two copies of the same samples: the output is the signal itself.
    np.testing.assert_allclose(block, noise[BLOCK : 2 * BLOCK], atol=1e-5)


def test_offset_search_is_scale_invariant() -> None:
    noise = np.random.default_rng(2).standard_normal(BLOCK * 4).astype(np.float32)
    splicer = SolaSplicer(BLOCK, CROSSFADE, SEARCH)
    splicer.splice(noise[: splicer.frame_size])
    splicer.splice(0.1 * noise[BLOCK - 123 : BLOCK - 123 + splicer.frame_size])
    assert splicer.last_offset == 123


def test_rejects_wrong_frame_sizes_and_settings() -> None:
    splicer = SolaSplicer(BLOCK, CROSSFADE, SEARCH)
    with pytest.raises(ValueError, match="frame"):
        splicer.splice(np.zeros(BLOCK, dtype=np.float32))
    with pytest.raises(ValueError):
        SolaSplicer(BLOCK, 0, SEARCH)
