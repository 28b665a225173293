"""Streaming sample-rate conversion with a fixed, small delay.

Why not soxr (or GStreamer's audioresample) here: in streaming mode soxr processes in internal blocks and
holds back a varying 20-40 ms of output at its MQ/HQ settings (measured with 20 ms chunks), which would
eat a large part of our latency budget twice per session (in and out). This is a polyphase windowed-sinc
resampler that holds back exactly ``half_width`` input samples (under 1 ms at speech rates), keeps its
history between chunks (so chunk edges leave no trace), and whose output index n is aligned with input
time n * in_rate / out_rate.
"""

from __future__ import annotations

from math import ceil, gcd

import numpy as np
import numpy.typing as npt

from vcstream.audio.types import Audio

#: zero crossings of the sinc on each side, at the lower of the two rates
ZERO_CROSSINGS = 24
#: pass band edge as a fraction of the lower Nyquist frequency
ROLLOFF = 0.95
KAISER_BETA = 8.6


class StreamingResampler:
    """Converts a mono float32 stream between two rates, chunk by chunk, in constant memory."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        g = gcd(in_rate, out_rate)
        self.in_rate, self.out_rate = in_rate, out_rate
        self._up, self._down = out_rate // g, in_rate // g  # output n sits at input time n*down/up
        cutoff = ROLLOFF * 0.5 * min(in_rate, out_rate) / in_rate  # cycles per input sample
        half_width = ZERO_CROSSINGS / (2 * cutoff)  # in input samples
        self._taps_each_side = ceil(half_width)
        self._table = self._phase_table(cutoff, half_width)
        # History starts with zeros so output 0 (at input time 0) has a full window.
        self._buffer: npt.NDArray[np.float32] = np.zeros(self._taps_each_side - 1, dtype=np.float32)
        self._buffer_start = -(self._taps_each_side - 1)  # absolute input index of _buffer[0]
        self._consumed = 0  # input samples received
        self._next_out = 0  # absolute index of the next output sample

    def _phase_table(self, cutoff: float, half_width: float) -> npt.NDArray[np.float32]:
        k = self._taps_each_side
        offsets = np.arange(-k + 1, k + 1)  # taps at base + offset
        phases = np.arange(self._up)[:, None] / self._up
        tau = phases - offsets[None, :]  # time from each tap to the output instant, in input samples
        window = np.kaiser(2 * k + 1, KAISER_BETA)
        # Evaluate the Kaiser window continuously by interpolating the sampled one over [-half, half].
        grid = np.linspace(-k, k, 2 * k + 1)
        w = np.interp(np.clip(tau, -half_width, half_width) * k / half_width, grid, window)
        w[np.abs(tau) > half_width] = 0.0
        h = 2 * cutoff * np.sinc(2 * cutoff * tau) * w
        h /= h.sum(axis=1, keepdims=True)  # unity gain at DC for every phase
        return h.astype(np.float32)

    @property
    def latency_samples(self) -> int:
        """Worst-case output samples held back: the window's right half, at the output rate."""
        return ceil(self._taps_each_side * self._up / self._down)

    def process(self, chunk: Audio) -> Audio:
        """Feed input samples, get every output sample whose window is now complete."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError("StreamingResampler takes mono 1-D chunks")
        self._buffer = np.concatenate([self._buffer, chunk])
        self._consumed += chunk.shape[0]
        return self._emit()

    def flush(self) -> Audio:
        """Pad with silence so every received sample reaches the output; resets nothing."""
        return self.process(np.zeros(self._taps_each_side, dtype=np.float32))

    def _emit(self) -> Audio:
        k = self._taps_each_side
        # Output n needs input up to floor(n*down/up) + k, which must be < consumed.
        last = ((self._consumed - k) * self._up - 1) // self._down  # largest n with base + k < consumed
        count = last - self._next_out + 1
        if count <= 0:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._next_out, self._next_out + count, dtype=np.int64)
        base, phase = np.divmod(n * self._down, self._up)
        index = (base - self._buffer_start - k + 1)[:, None] + np.arange(2 * k)[None, :]
        out: Audio = np.einsum("ij,ij->i", self._buffer[index], self._table[phase]).astype(np.float32)
        self._next_out += count
        # Drop input no future output can reach.
        next_base = (self._next_out * self._down) // self._up
        keep_from = next_base - k + 1 - self._buffer_start
        if keep_from > 0:
            self._buffer = self._buffer[keep_from:]
            self._buffer_start += keep_from
        return out


class IdentityResampler:
    """Stands in for a resampler when both rates are equal (keeps callers branch-free)."""

    latency_samples = 0

    def process(self, chunk: Audio) -> Audio:
        return np.asarray(chunk, dtype=np.float32)

    def flush(self) -> Audio:
        return np.zeros(0, dtype=np.float32)


def make_resampler(in_rate: int, out_rate: int) -> StreamingResampler | IdentityResampler:
    return IdentityResampler() if in_rate == out_rate else StreamingResampler(in_rate, out_rate)


def resample(samples: Audio, in_rate: int, out_rate: int) -> Audio:
    """Whole-signal conversion with the same filter, output length round(len * out/in)."""
    if in_rate == out_rate:
        return np.asarray(samples, dtype=np.float32)
    r = StreamingResampler(in_rate, out_rate)
    y = np.concatenate([r.process(samples), r.flush()])
    return y[: round(samples.shape[0] * out_rate / in_rate)]
