"""Speech with markers a voice converter keeps: for ``vcstream bench load``'s mouth-to-ear latency.

A chirp found by waveform correlation (``bench latency``) does not survive an engine that re-synthesises
the voice at another pitch (world): the waveform changes, but the *energy envelope* of speech bursts
in silence stays where it was. The talk track is therefore short bursts of flite speech separated by
silences of irregular length; each burst's onset is a marker. A marker is found again in a call's
received audio by correlating energy envelopes, first over a long stretch (the burst and the next
ones: their irregular spacing allows one alignment only) and then over the burst alone, near that.
Its latency is the wall-clock time from the push of the chunk holding the burst's first sample to
the arrival of the buffer holding its match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import correlate

from vcstream.audio.types import Audio

FloatArray = npt.NDArray[np.float64]

BURST_S = 0.3
#: silence between bursts, drawn between these (fixed seed): no two stretches look alike
SILENCE_S = (0.35, 0.7)
#: envelope resolution
HOP_S = 0.001
#: the coarse match spans the burst and what follows it
COARSE_BEFORE_S, COARSE_AFTER_S = 0.2, 1.8
#: the fine match: the burst and the silence just before it, within this of the coarse position
FINE_BEFORE_S, FINE_SEARCH_S = 0.05, 0.08
#: below these normalised envelope correlations a marker counts as not found (coarse), or the
#: coarse position stands (fine); a clean world-converted call scores about 0.8 coarse, 0.5-0.8 fine
MIN_COARSE_MATCH, MIN_MATCH = 0.6, 0.5
FADE_S = 0.005


@dataclass(frozen=True)
class TalkTrack:
    """The looped signal every call is fed, and its bursts' first samples."""

    samples: Audio
    onsets: tuple[int, ...]
    rate: int


def talk_track(speech: Audio, rate: int, seconds: float = 12.0, chunk: int = 1, seed: int = 9) -> TalkTrack:
    """Bursts cut from the loudest parts of ``speech``, in silences; the length is a multiple of
    ``chunk`` so that the loop stays on the push grid."""
    rng = np.random.default_rng(seed)
    burst = round(BURST_S * rate)
    fade = np.hanning(2 * round(FADE_S * rate))
    half = fade.shape[0] // 2
    level = _rms_windows(speech, burst)
    candidates = np.flatnonzero(level > 0.5 * level.max())
    total = round(seconds * rate)
    total += (-total) % chunk
    out = np.zeros(total, dtype=np.float32)
    onsets = []
    position = round(rng.uniform(*SILENCE_S) * rate)
    while position + burst + round(SILENCE_S[0] * rate) < total:
        start = int(rng.choice(candidates))
        piece = speech[start : start + burst].astype(np.float32).copy()
        piece[:half] *= fade[:half]
        piece[-half:] *= fade[half:]
        out[position : position + burst] = 0.8 * piece / max(1e-6, float(np.max(np.abs(piece))))
        onsets.append(position)
        position += burst + round(rng.uniform(*SILENCE_S) * rate)
    return TalkTrack(out, tuple(onsets), rate)


def _rms_windows(samples: Audio, width: int) -> FloatArray:
    """RMS of every ``width``-sample window starting at each index (valid positions only)."""
    power = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    result: FloatArray = np.sqrt(np.maximum(power[width:] - power[:-width], 0.0) / width)
    return result


def envelope(samples: Audio, rate: int) -> FloatArray:
    """RMS over 2 ms windows, one value per millisecond (value k covers samples from k ms)."""
    hop = max(1, round(rate * HOP_S))
    level = _rms_windows(samples, 2 * hop) if samples.shape[0] >= 2 * hop else np.zeros(0)
    result: FloatArray = level[::hop]
    return result


def _best_match(haystack: FloatArray, template: FloatArray) -> tuple[int, float]:
    """Offset of ``template`` in ``haystack`` with the highest normalised correlation, and that value."""
    if haystack.size < template.size or template.size == 0:
        return 0, 0.0
    t = template - template.mean()
    c = correlate(haystack, t, mode="valid", method="fft")
    sums = np.concatenate([[0.0], np.cumsum(haystack)])
    squares = np.concatenate([[0.0], np.cumsum(haystack**2)])
    n = template.size
    window_sum = sums[n:] - sums[:-n]
    window_var = np.maximum(squares[n:] - squares[:-n] - window_sum**2 / n, 0.0)
    ncc = c / np.maximum(np.sqrt(window_var * np.sum(t**2)), 1e-12)
    best = int(np.argmax(ncc))
    return best, float(ncc[best])


class MarkerLocator:
    """Finds the markers of a looped ``TalkTrack`` in one call's received audio.

    ``received`` is the audio in arrival order and ``arrivals`` each buffer's (monotonic arrival
    time, samples); ``pushes[i]`` is when chunk ``i`` of the looped track was pushed."""

    def __init__(self, track: TalkTrack, chunk: int, pushes: Sequence[float]) -> None:
        self.track = track
        self.chunk = chunk
        self.pushes = np.asarray(pushes, dtype=np.float64)
        hop = max(1, round(track.rate * HOP_S))
        if track.samples.shape[0] % hop:
            raise ValueError("the track's length must be a whole number of envelope hops")
        self._period = track.samples.shape[0] // hop
        self._looped = envelope(np.tile(track.samples, 3), track.rate)

    def marker_pushes(self, since: float, until: float) -> list[tuple[int, float]]:
        """(track sample index of the onset, push time) of every marker pushed in [since, until)."""
        length = self.track.samples.shape[0]
        found = []
        loops = int(self.pushes.size * self.chunk // length) + 1
        for loop in range(loops):
            for onset in self.track.onsets:
                index = (loop * length + onset) // self.chunk
                if index < self.pushes.size and since <= self.pushes[index] < until:
                    found.append((onset, float(self.pushes[index])))
        return found

    def latencies(
        self,
        received: Audio,
        arrivals: Sequence[tuple[float, int]],
        since: float,
        until: float,
        max_lag_s: float,
    ) -> list[tuple[float, float | None]]:
        """(push time, seconds to arrival or None when not found) of each marker pushed in [since, until)."""
        rate = self.track.rate
        hop = max(1, round(rate * HOP_S))
        heard = envelope(received, rate)
        times = np.asarray([at for at, _ in arrivals], dtype=np.float64)
        ends = np.cumsum([n for _, n in arrivals])
        results: list[tuple[float, float | None]] = []
        for onset, pushed in self.marker_pushes(since, until):
            results.append((pushed, self._locate(onset, pushed, heard, times, ends, hop, max_lag_s)))
        return results

    def _locate(
        self,
        onset: int,
        pushed: float,
        heard: FloatArray,
        times: npt.NDArray[np.float64],
        ends: npt.NDArray[np.int_],
        hop: int,
        max_lag_s: float,
    ) -> float | None:
        ms = 1 / HOP_S
        # the template's copy in the middle loop, so that what precedes or follows wraps around
        start = self._period + onset // hop
        coarse = self._looped[start - round(COARSE_BEFORE_S * ms) : start + round(COARSE_AFTER_S * ms)]
        # the received buffers that arrived between the push and the longest lag allowed
        first = int(np.searchsorted(times, pushed))
        last = int(np.searchsorted(times, pushed + max_lag_s + COARSE_AFTER_S))
        if first >= times.size:
            return None
        lo = (int(ends[first - 1]) if first > 0 else 0) // hop
        hi = int(ends[min(last, times.size - 1)]) // hop
        offset, score = _best_match(heard[max(0, lo - round(COARSE_BEFORE_S * ms)) : hi], coarse)
        if score < MIN_COARSE_MATCH:
            return None
        coarse_at = max(0, lo - round(COARSE_BEFORE_S * ms)) + offset + round(COARSE_BEFORE_S * ms)
        fine = self._looped[start - round(FINE_BEFORE_S * ms) : start + round(BURST_S * ms)]
        search = round(FINE_SEARCH_S * ms)
        base = max(0, coarse_at - round(FINE_BEFORE_S * ms) - search)
        fine_offset, fine_score = _best_match(heard[base : coarse_at + search + fine.size], fine)
        at = base + fine_offset + round(FINE_BEFORE_S * ms) if fine_score >= MIN_MATCH else coarse_at
        buffer = int(np.searchsorted(ends, at * hop, side="right"))
        if buffer >= times.size:
            return None
        return float(times[buffer]) - pushed
