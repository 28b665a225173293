"""Weight-free zero-shot voice conversion on the CPU with the WORLD vocoder (pyworld).

Per block the session analyses the input (DIO + StoneMask F0, CheapTrick envelope, D4C aperiodicity,
5 ms frames), maps F0 toward the target in the log domain (mean/std), moves the envelope toward the
reference's (a frequency warp for formant positions and a per-band equalisation, estimated from the
caller's running statistics: ``world_caller``, ``world_envelope``), replaces most of each voiced
frame's envelope shape with that of its nearest reference frames (``world_frames``), and
resynthesises.

Streaming specifics:

* Analysis windows hold 80 ms of left context and ``lookahead_time`` (40 ms) of right context around
  the new frames; the window end is mirror-padded so DIO sees no abrupt edge there. Each frame is
  analysed once; short voicing dropouts (<= 20 ms between compatible F0 values) are bridged.
* Synthesis is a streaming re-implementation of WORLD's excitation: a pulse train whose phase runs on
  across blocks plus frame-wise filtered noise, each pulse/segment rendered as a minimum-phase response
  and overlap-added. Response tails spill into the next block through the overlap-add buffer, so
  blocks join seamlessly without re-synthesising and crossfading (which would misalign the pulse
  trains of the two overlapping renderings).
* The only delay is the analysis lookahead: ``latency_samples == lookahead``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyworld
from scipy.signal import resample_poly

from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, EngineSession, VoiceProfile, check_block, seconds_to_samples
from vcstream.engines.settings import SessionSettings
from vcstream.engines.world_caller import CallerVoice
from vcstream.engines.world_envelope import (
    BINS,
    FFT_SIZE,
    WarpTable,
    grid_envelope,
)
from vcstream.engines.world_frames import FrameSelector, ReferenceFrames
from vcstream.engines.world_settings import FRAME, SAMPLE_RATE, WorldSettings
from vcstream.errors import InvalidAudioError

FloatArray = npt.NDArray[np.float64]

#: WORLD frame period: 5 ms
FRAME_PERIOD_MS = 1000.0 * FRAME / SAMPLE_RATE
F0_FLOOR = 60.0
F0_CEIL = 500.0
#: left context of each analysis window (DIO's voicing decisions degrade within ~80 ms of an edge)
CONTEXT = 1280
#: reflected continuation appended after the window end so DIO's filters see no edge there
MIRROR = 480
#: length of each rendered pulse / noise response (32 ms; minimum-phase responses have decayed)
RESPONSE = FFT_SIZE // 2
#: longest unvoiced run (frames) between voiced frames of similar F0 treated as a tracking dropout
MAX_GAP_FRAMES = 4
GAP_MAX_LOG_RATIO = 0.2


@dataclass(frozen=True)
class WorldVoiceFeatures:
    """What a reference contributes to the conversion (read-only, shared by sessions)."""

    #: mean and standard deviation of natural-log F0 over voiced frames
    lf0_mean: float
    lf0_std: float
    #: mean natural-log power envelope over voiced frames, sampled at ``ENV_GRID_HZ``
    envelope: FloatArray = field(repr=False)
    voiced_s: float
    #: the reference's voiced frames for frame-wise envelope replacement
    frames: ReferenceFrames = field(repr=False)


def _f0_track(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    f0, times = pyworld.dio(x, SAMPLE_RATE, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_PERIOD_MS)
    return np.asarray(f0, dtype=np.float64), np.asarray(times, dtype=np.float64)


def _log_power(sp: FloatArray) -> FloatArray:
    out: FloatArray = np.log(np.maximum(sp, 1e-20))
    return out


def _robust_log_stats(lf0: FloatArray) -> tuple[float, float]:
    """Mean/std of log-F0 ignoring octave errors (values beyond 3 MADs of the median)."""
    med = float(np.median(lf0))
    mad = float(np.median(np.abs(lf0 - med))) * 1.4826
    keep = lf0[np.abs(lf0 - med) <= 3 * max(mad, 0.02)]
    return float(keep.mean()), float(max(keep.std(), 0.02))


def _minimum_phase(log_amplitude: FloatArray) -> npt.NDArray[np.complex128]:
    """Minimum-phase spectra (rows) with the given natural-log amplitude, by cepstral folding."""
    cep = np.fft.irfft(log_amplitude, FFT_SIZE, axis=-1)
    cep[..., 1 : FFT_SIZE // 2] *= 2.0
    cep[..., FFT_SIZE // 2 + 1 :] = 0.0
    spec: npt.NDArray[np.complex128] = np.exp(np.fft.rfft(cep, axis=-1))
    return spec


_BIN_INDEX = np.arange(BINS, dtype=np.float64)
#: removes a pulse response's DC with a smooth bump instead of a step (as WORLD does)
_DC_WINDOW = np.hanning(RESPONSE + 2)[1:-1] / np.hanning(RESPONSE + 2)[1:-1].sum()


class WorldSession(EngineSession):
    """One conversion stream; see the module docstring for the algorithm."""

    def __init__(
        self,
        voice: VoiceProfile,
        block_time: float,
        lookahead_time: float,
        correction: float,
        seed: int,
    ) -> None:
        self.sample_rate = SAMPLE_RATE
        self.block_size = seconds_to_samples(block_time, SAMPLE_RATE, FRAME)
        self._lookahead = seconds_to_samples(lookahead_time, SAMPLE_RATE, FRAME)
        self._correction = correction
        self._features = _features_of(voice)
        self._rng = np.random.default_rng(seed)
        self._frames = self.block_size // FRAME
        self._ring = np.zeros(CONTEXT + self.block_size + self._lookahead)
        self._f0_history = np.zeros(MAX_GAP_FRAMES + 1)
        self._caller = CallerVoice()
        self._warp = WarpTable()
        self._selector = FrameSelector()
        # the previous block's last frame (frame 0 of this block's synthesis)
        self._last_f0 = 0.0
        self._last_periodic = np.zeros(BINS, dtype=np.complex128)
        # pulse phase (cycles) at the end of the previous block, None after an unvoiced sample
        self._phase: float | None = None
        self._ola = np.zeros(self.block_size + RESPONSE + FRAME)

    @property
    def latency_samples(self) -> int:
        return self._lookahead

    @property
    def warp_factor(self) -> float:
        """Current envelope frequency-warp factor (>1 raises formants)."""
        return self._warp.factor

    @property
    def source_f0(self) -> tuple[float, float]:
        """Running estimate of the input's log-F0 mean and std."""
        return self._caller.f0.mean, self._caller.f0.std

    def set_voice(self, voice: VoiceProfile) -> None:
        self._features = _features_of(voice)

    def process(self, block: Audio) -> Audio:
        x = check_block(block, self.block_size)
        n = self.block_size
        self._ring[:-n] = self._ring[n:]
        self._ring[-n:] = x
        f0, log_sp, ap = self._analyse()
        self._caller.update(f0, log_sp)
        f0_out, periodic, aperiodic = self._convert(f0, log_sp, ap)
        self._synthesise(f0_out, periodic, aperiodic)
        out = self._ola[:n].copy()
        self._ola[:-n] = self._ola[n:]
        self._ola[-n:] = 0.0
        return _soft_limit(out).astype(np.float32)

    # -- analysis ------------------------------------------------------------------------------

    def _analyse(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """F0, log envelope and aperiodicity of this block's new frames (the frame at the block end
        included; the one at its start was the previous block's last)."""
        window = np.concatenate([self._ring, self._ring[: -MIRROR - 1 : -1]])
        raw_f0, times = _f0_track(window)
        first = CONTEXT // FRAME + 1
        last = first + self._frames
        ahead = (CONTEXT + self.block_size + self._lookahead) // FRAME + 1
        times_new = np.ascontiguousarray(times[first:last])
        f0 = np.asarray(
            pyworld.stonemask(window, np.ascontiguousarray(raw_f0[first:last]), times_new, SAMPLE_RATE),
            dtype=np.float64,
        )
        f0 = self._bridge(f0, raw_f0[last:ahead])
        sp = pyworld.cheaptrick(window, f0, times_new, SAMPLE_RATE, f0_floor=F0_FLOOR, fft_size=FFT_SIZE)
        ap = pyworld.d4c(window, f0, times_new, SAMPLE_RATE, threshold=0.0, fft_size=FFT_SIZE)
        return f0, _log_power(np.asarray(sp, dtype=np.float64)), np.asarray(ap, dtype=np.float64)

    def _bridge(self, f0: FloatArray, ahead: FloatArray) -> FloatArray:
        """Fill unvoiced runs of at most MAX_GAP_FRAMES between voiced frames of similar F0 (DIO
        dropouts) by log-linear interpolation; only this block's frames change."""
        seq = np.concatenate([self._f0_history, f0, ahead])
        start = self._f0_history.size
        voiced = seq > 0
        end = start + f0.size
        i = start
        while i < end:
            if voiced[i]:
                i += 1
                continue
            j = i
            while j < seq.size and not voiced[j]:
                j += 1
            left = i - 1
            while left >= 0 and not voiced[left]:
                left -= 1
            if left >= 0 and j < seq.size and j - left - 1 <= MAX_GAP_FRAMES:
                a, b = math.log(seq[left]), math.log(seq[j])
                if abs(a - b) < GAP_MAX_LOG_RATIO:
                    idx = np.arange(i, min(j, end))
                    seq[idx] = np.exp(a + (b - a) * (idx - left) / (j - left))
            i = j
        out = seq[start : start + f0.size].copy()
        self._f0_history = out[-self._f0_history.size :].copy()
        return out

    # -- conversion ----------------------------------------------------------------------------

    def _convert(
        self, f0: FloatArray, log_sp: FloatArray, ap: FloatArray
    ) -> tuple[FloatArray, npt.NDArray[np.complex128], npt.NDArray[np.complex128]]:
        target = self._features
        src_mean, src_std = self._caller.f0.mean, self._caller.f0.std
        voiced = f0 > 0
        f0_out = np.zeros_like(f0)
        ratio = min(max(target.lf0_std / src_std, 0.5), 2.0)
        f0_out[voiced] = np.exp(target.lf0_mean + ratio * (np.log(f0[voiced]) - src_mean))
        f0_out[voiced] = np.clip(f0_out[voiced], 0.8 * F0_FLOOR, F0_CEIL)

        warp = self._caller.warp_toward(target.lf0_mean, target.envelope)
        self._warp.set(warp)
        warped = self._warp.apply(log_sp)
        correction = self._caller.equalisation_toward(target.envelope, warp, self._correction)
        if correction.size:
            warped += correction
        warped = self._selector.replace(target.frames, warped, voiced)

        # WORLD's split: periodic power sp*(1-ap^2), aperiodic sp*ap^2; unvoiced frames are all noise
        ap = np.clip(ap, 0.001, 1.0)
        ap[~voiced] = 1.0
        power_ap = ap**2
        periodic = _minimum_phase(0.5 * (warped + np.log(np.maximum(1.0 - power_ap, 1e-6))))
        aperiodic = _minimum_phase(0.5 * (warped + np.log(power_ap)))
        return f0_out, periodic, aperiodic

    # -- synthesis -----------------------------------------------------------------------------

    def _synthesise(
        self, f0: FloatArray, periodic: npt.NDArray[np.complex128], aperiodic: npt.NDArray[np.complex128]
    ) -> None:
        """Render this block's excitation into the overlap-add buffer: frames 0..F sit at samples
        0, 80, ..., block_size (frame 0 is the previous block's last)."""
        n = self.block_size
        frames_f0 = np.concatenate([[self._last_f0], f0])
        frames_periodic = np.concatenate([self._last_periodic[None, :], periodic])
        self._last_f0 = float(f0[-1])
        self._last_periodic = periodic[-1].copy()

        # Noise: one 5 ms segment centred on each new frame, filtered by that frame's response.
        noise = self._rng.standard_normal((self._frames, FRAME))
        noise -= noise.mean(axis=1, keepdims=True)
        filtered = np.fft.irfft(np.fft.rfft(noise, FFT_SIZE, axis=1) * aperiodic, FFT_SIZE, axis=1)
        span = FRAME + RESPONSE
        for k in range(self._frames):
            start = (k + 1) * FRAME - FRAME // 2
            self._ola[start : start + span] += filtered[k, :span]

        # Pulses: per-sample F0 from the nearest-frame voicing and log-linear interpolation.
        sample = np.arange(n)
        left = sample // FRAME
        frac = (sample % FRAME) / FRAME
        nearest = (sample + FRAME // 2) // FRAME
        voiced = frames_f0[nearest] > 0
        if not voiced.any():
            self._phase = None
            return
        log_f0 = np.log(np.where(frames_f0 > 0, frames_f0, 1.0))
        a, b = log_f0[left], log_f0[left + 1]
        va, vb = frames_f0[left] > 0, frames_f0[left + 1] > 0
        a = np.where(va, a, b)
        b = np.where(vb, b, a)
        inc = np.where(voiced, np.exp(a + (b - a) * frac) / SAMPLE_RATE, 0.0)

        crossings: list[int] = []
        offsets: list[float] = []
        edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
        for run_start, run_end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            start_phase = self._phase if (run_start == 0 and self._phase is not None) else 0.5
            steps = inc[run_start:run_end]
            cum = start_phase + np.cumsum(steps)
            before = cum - steps
            crossed = np.flatnonzero(np.floor(cum) > np.floor(before))
            # the phase reaches a whole cycle between sample i-1 and i, at (i - 1) + delta
            delta = (np.floor(cum[crossed]) - before[crossed]) / steps[crossed]
            crossings.extend((run_start + crossed).tolist())
            offsets.extend(delta.tolist())
            self._phase = float(cum[-1] - math.floor(cum[-1])) if run_end == n else None
        if not crossings:
            return
        at = np.asarray(crossings, dtype=np.int64)
        times = np.maximum(at - 1 + np.asarray(offsets), 0.0)
        index = np.minimum(np.floor(times).astype(np.int64), n - 1)
        shift = times - index
        gain = np.sqrt(1.0 / inc[at])  # sqrt(T0): pulse energy per period matches the noise's
        frame = nearest[at]
        spectra = frames_periodic[frame] * (
            gain[:, None] * np.exp(-2j * np.pi * np.outer(shift, _BIN_INDEX) / FFT_SIZE)
        )
        responses = np.fft.irfft(spectra, FFT_SIZE, axis=1)[:, :RESPONSE]
        responses -= responses.sum(axis=1, keepdims=True) * _DC_WINDOW
        for start, response in zip(index.tolist(), responses, strict=True):
            self._ola[start : start + RESPONSE] += response


def _soft_limit(y: FloatArray, knee: float = 0.9) -> FloatArray:
    """Memoryless guard against clipping: identity below ``knee``, tanh-compressed toward 1 above
    it (continuous in value and slope, so it adds no clicks at block joins)."""
    mag = np.abs(y)
    over = mag > knee
    if over.any():
        y = y.copy()
        y[over] = np.sign(y[over]) * (knee + (1 - knee) * np.tanh((mag[over] - knee) / (1 - knee)))
    out: FloatArray = np.clip(y, -1.0, 1.0)
    return out


def _features_of(voice: VoiceProfile) -> WorldVoiceFeatures:
    if voice.engine != WorldEngine.name or not isinstance(voice.features, WorldVoiceFeatures):
        raise ValueError(f"voice profile was prepared by engine {voice.engine!r}, not {WorldEngine.name!r}")
    return voice.features


class WorldEngine(Engine):
    """WORLD-vocoder conversion: no weights, one CPU core carries several streams."""

    name = "world"
    sample_rate = SAMPLE_RATE
    settings_type = WorldSettings
    label = "CPU engine (WORLD)"
    caveat = "quality is lower than Seed-VC"

    def __init__(self, lookahead_time: float = 0.04, correction: float = 0.5, seed: int = 0) -> None:
        #: analysis lookahead (the session's whole algorithmic delay)
        self.lookahead_time = lookahead_time
        #: strength of the smoothed envelope colour correction toward the reference (0 disables)
        self.correction = correction
        #: noise seed of every session (a session's output depends on its input only)
        self.seed = seed

    def prepare_voice(self, reference: Audio, sample_rate: int) -> VoiceProfile:
        x = np.asarray(reference, dtype=np.float64)
        if sample_rate != SAMPLE_RATE:
            g = math.gcd(sample_rate, SAMPLE_RATE)
            x = np.asarray(resample_poly(x, SAMPLE_RATE // g, sample_rate // g), dtype=np.float64)
        x = np.ascontiguousarray(x)
        raw_f0, times = _f0_track(x)
        f0 = np.asarray(pyworld.stonemask(x, raw_f0, times, SAMPLE_RATE), dtype=np.float64)
        voiced = f0 > 0
        if voiced.sum() < 20:
            raise InvalidAudioError("reference holds too little voiced speech to take a voice from")
        lf0_mean, lf0_std = _robust_log_stats(np.log(f0[voiced]))
        sp = pyworld.cheaptrick(x, f0, times, SAMPLE_RATE, f0_floor=F0_FLOOR, fft_size=FFT_SIZE)
        voiced_log_sp = _log_power(np.asarray(sp, dtype=np.float64)[voiced])
        envelope = grid_envelope(voiced_log_sp).mean(axis=0)
        envelope.flags.writeable = False
        voiced_s = float(voiced.sum()) * FRAME / SAMPLE_RATE
        features = WorldVoiceFeatures(
            lf0_mean, lf0_std, envelope, voiced_s, ReferenceFrames.from_envelopes(voiced_log_sp)
        )
        return VoiceProfile(self.name, sample_rate, reference.shape[0] / sample_rate, features)

    def open_session(self, voice: VoiceProfile, settings: SessionSettings | None = None) -> WorldSession:
        block_time = self.own_settings(settings, WorldSettings).block_time
        return WorldSession(voice, block_time, self.lookahead_time, self.correction, self.seed)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "sample_rate": self.sample_rate,
            "device": "cpu",
            "lookahead_s": self.lookahead_time,
        }
