"""Seed-VC behind the engine interface: per-voice prompt features computed once, and per-session
streaming state that follows the real-time algorithm of Seed-VC's GUI.

Per block (all lengths multiples of 20 ms = 441 samples at 22.05 kHz):

* the session window is ``extra_ce + crossfade + search + block + extra_right`` samples, shifted by one
  block; only its 16 kHz version is kept (the content encoder's input);
* XLS-R runs over the whole window, its first ``(extra_ce - extra_dit) * 50`` frames are dropped;
* the length regulator maps the rest to ``span // 256`` mel frames (``span`` = window minus the dropped
  part), appended after the voice's prompt condition;
* the DiT solves the flow with ``diffusion_steps`` Euler steps (classifier-free guidance doubles the
  batch when ``cfg_rate > 0``), noise drawn from the session's own generator;
* HiFT vocodes the generated frames; the ``block + sola_buffer + search`` samples that end
  ``extra_right`` before the window's end go to the SOLA splicer, which returns one block.

Each block is split into ``prepare`` (numpy, per session), ``SeedVCEngine.run_batch`` (torch, any number
of sessions with equal settings in one batch) and ``finish`` (SOLA), so the block scheduler
(``vcstream.streaming.scheduler``) stacks many sessions into one forward pass.

Shapes (see ``shapes``): a batch's XLS-R input and generated frames are fixed by its settings (the
batch key), its DiT length by the largest prompt bucket in it; a session's prompt is cut to a bucket.
``compile_mode`` wraps the DiT estimator with ``torch.compile`` for those shapes ("compile"), or with CUDA
graphs on top ("cudagraphs", mode reduce-overhead, CUDA only); off by default.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Hashable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from vcstream.audio.resample import StreamingResampler, resample
from vcstream.audio.sola import SolaSplicer
from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, EngineSession, VoiceProfile, check_block
from vcstream.engines.seedvc.model import CONTENT_FRAME_RATE, CONTENT_RATE, SeedVCModels
from vcstream.engines.seedvc.settings import MAX_REFERENCE_S, MIN_PROMPT_S, SeedVCSettings
from vcstream.engines.seedvc.shapes import prompt_bucket
from vcstream.engines.settings import SessionSettings, SettingsError
from vcstream.errors import ConfigurationError, InvalidAudioError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: the GUI caps the SOLA crossfade buffer at four 20 ms units
MAX_SOLA_UNITS = 4
#: how the DiT estimator runs: eager, torch.compile (inductor), or torch.compile with CUDA graphs
COMPILE_MODES = ("off", "compile", "cudagraphs")


def _units(seconds: float, what: str, zc: int, sample_rate: int, minimum: int = 0) -> int:
    """A duration as a whole number of 20 ms units; rejects anything else."""
    units = round(seconds * sample_rate / zc)
    if abs(units * zc - seconds * sample_rate) > 0.5 or units < minimum:
        least = f" and at least {minimum * 20} ms" if minimum else ""
        raise ConfigurationError(f"{what} must be a multiple of 20 ms{least} (got {seconds} s)")
    return units


@dataclass(frozen=True)
class StreamLayout:
    """Sizes of the streaming algorithm in samples at the model rate (content sizes at 16 kHz)."""

    sample_rate: int
    hop: int
    zc: int
    block: int
    crossfade: int
    sola_buffer: int
    search: int
    extra_ce: int
    extra_dit: int
    extra_right: int

    @classmethod
    def from_settings(cls, s: SeedVCSettings, sample_rate: int, hop: int) -> StreamLayout:
        zc = sample_rate // 50
        block = _units(s.block_time, "block_time", zc, sample_rate, 1)
        crossfade = _units(s.crossfade_time, "crossfade_time", zc, sample_rate, 1)
        extra_ce = _units(s.extra_time_ce, "extra_time_ce", zc, sample_rate)
        extra_dit = _units(s.extra_time_dit, "extra_time_dit", zc, sample_rate)
        right = _units(s.extra_time_right, "extra_time_right", zc, sample_rate)
        if extra_dit > extra_ce:
            raise ConfigurationError("extra_time_dit cannot exceed extra_time_ce (the encoder's context)")
        layout = cls(
            sample_rate=sample_rate,
            hop=hop,
            zc=zc,
            block=block * zc,
            crossfade=crossfade * zc,
            sola_buffer=min(crossfade, MAX_SOLA_UNITS) * zc,
            search=zc,
            extra_ce=extra_ce * zc,
            extra_dit=extra_dit * zc,
            extra_right=right * zc,
        )
        if layout.target_frames * hop < layout.extra_right + layout.frame:
            raise ConfigurationError("extra_time_dit too short to cover the SOLA frame: use at least 20 ms")
        return layout

    @property
    def window(self) -> int:
        """Samples of input the model sees per block."""
        return self.extra_ce + self.crossfade + self.search + self.block + self.extra_right

    @property
    def window_16k(self) -> int:
        return self.window * CONTENT_RATE // self.sample_rate

    @property
    def skipped_content_frames(self) -> int:
        """XLS-R frames seen only by the content encoder (left context the DiT does not get)."""
        return (self.extra_ce - self.extra_dit) * CONTENT_FRAME_RATE // self.sample_rate

    @property
    def target_frames(self) -> int:
        """Mel frames generated per block: the DiT's part of the window, in whole hops."""
        return (self.window - (self.extra_ce - self.extra_dit)) // self.hop

    @property
    def frame(self) -> int:
        """Samples handed to the SOLA splicer per block."""
        return self.block + self.sola_buffer + self.search

    @property
    def latency(self) -> int:
        """Index delay of output against input (see ``SeedVCSession.latency_samples``)."""
        return self.extra_right + self.sola_buffer + self.search


@dataclass(frozen=True, eq=False)
class PromptFeatures:
    """What the DiT needs of a voice, for one prompt length (all on the model's device)."""

    condition: torch.Tensor  # (1, frames, 384; 192 reduced) length-regulated XLS-R features of the prompt
    mel: torch.Tensor  # (1, 80, frames)
    style: torch.Tensor  # (1, 192) CAM++ embedding

    @property
    def frames(self) -> int:
        return int(self.mel.shape[-1])


@dataclass(eq=False)
class SeedVCVoice:
    """``VoiceProfile.features`` of this engine: the reference at the model rate (at most 25 s) and
    prompt features per prompt length, computed on first use (a memo: sessions never change it)."""

    reference: Audio
    prompts: dict[int, PromptFeatures] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ContentBuffer:
    """The content encoder's 16 kHz copy of the session window, converted as a stream.

    A stateful windowed-sinc resampler converts each block once, with its history, so block edges
    leave no trace (the GUI instead re-resamples each block with 40 ms of history through librosa and
    overwrites the last 20 ms next time). The resampler holds back its right half-window (~1.6 ms);
    those newest samples are computed provisionally from a copy of its state padded with silence,
    so the 16 kHz window ends exactly where the 22.05 kHz input does; the next block replaces them
    with the real values.
    """

    def __init__(self, window_16k: int, in_rate: int) -> None:
        self._resampler = StreamingResampler(in_rate, CONTENT_RATE)
        self._in_rate = in_rate
        self._committed: npt.NDArray[np.float32] = np.zeros(window_16k, dtype=np.float32)
        self._consumed = 0
        self._produced = 0

    def push(self, block: Audio) -> Audio:
        """Add one block; returns the window (``window_16k`` samples) ending at the block's end."""
        new = self._resampler.process(block)
        window = self._committed.shape[0]
        self._committed = np.concatenate([self._committed, new])[-window:]
        self._consumed += block.shape[0]
        self._produced += new.shape[0]
        due = self._consumed * CONTENT_RATE // self._in_rate
        pending = due - self._produced
        if pending <= 0:
            return self._committed.copy()
        lookahead = copy.deepcopy(self._resampler).flush()[:pending]
        return np.concatenate([self._committed[pending:], lookahead])


@dataclass(eq=False)
class BlockRequest:
    """One session's inputs for one block, ready to be stacked with other sessions' requests."""

    content_16k: Audio
    prompt: PromptFeatures
    noise: torch.Tensor  # (1, 80, prompt frames + target frames)
    vocoder_seed: int
    layout: StreamLayout
    diffusion_steps: int
    cfg_rate: float
    dtype: str

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one forward pass."""
        return (self.layout, self.diffusion_steps, self.cfg_rate, self.dtype)


class SeedVCSession(EngineSession):
    """One stream: its window, SOLA tail, noise generator and current voice."""

    def __init__(self, engine: SeedVCEngine, voice: VoiceProfile, settings: SeedVCSettings) -> None:
        if settings.dtype != "fp32" and engine.torch_device.type != "cuda":
            raise SettingsError(
                f"dtype {settings.dtype} needs a CUDA device; on {engine.torch_device.type} use fp32"
            )
        self.engine = engine
        self.settings = settings
        self.layout = StreamLayout.from_settings(settings, engine.sample_rate, engine.models.hop_size)
        self.sample_rate = engine.sample_rate
        self.block_size = self.layout.block
        self._content = ContentBuffer(self.layout.window_16k, engine.sample_rate)
        self._sola = SolaSplicer(self.layout.block, self.layout.sola_buffer, self.layout.search)
        # The diffusion noise and the vocoder's excitation noise come from this session's own
        # streams, so a seed reproduces a session whatever other sessions do.
        self._noise = torch.Generator(device=engine.torch_device).manual_seed(settings.seed)
        self._vocoder_seeds = np.random.default_rng(settings.seed)
        self._prompt = engine.session_prompt(voice, settings.max_prompt_length)
        self.voice = voice

    @property
    def latency_samples(self) -> int:
        """``extra_right + sola_buffer + search`` samples. A block's output frame ends ``extra_right``
        before the newest input and is ``block + sola_buffer + search`` long; SOLA emits its first
        ``block`` samples from ``offset`` in ``[0, search]``. Output sample n therefore renders input
        sample ``n - (extra_right + sola_buffer + search - offset)``; the offset stays at 0 on
        consistent input (it starts there on silence) and otherwise moves within one 20 ms search
        window, so this is the nominal and the largest delay. Waiting for a block to fill (``block``)
        and inference time come on top."""
        return self.layout.latency

    def set_voice(self, voice: VoiceProfile) -> None:
        """Switch the target voice from the next block on (the SOLA crossfade smooths the change)."""
        self._prompt = self.engine.session_prompt(voice, self.settings.max_prompt_length)
        self.voice = voice

    def prepare(self, block: Audio) -> BlockRequest:
        """Shift the window by one block and draw this block's noise (no model work)."""
        block = check_block(block, self.block_size)
        content = self._content.push(block)
        prompt = self._prompt
        frames = prompt.frames + self.layout.target_frames
        noise = torch.randn(
            (1, self.engine.models.mel_settings.num_mels, frames),
            generator=self._noise,
            device=self.engine.torch_device,
        )
        return BlockRequest(
            content_16k=content,
            prompt=prompt,
            noise=noise,
            vocoder_seed=int(self._vocoder_seeds.integers(2**62)),
            layout=self.layout,
            diffusion_steps=self.settings.diffusion_steps,
            cfg_rate=self.settings.cfg_rate,
            dtype=self.settings.dtype,
        )

    def finish(self, result: Any) -> Audio:
        """Splice the generated frame onto the previous output; returns one block."""
        return self._sola.splice(result)

    def conceal(self) -> Audio:
        """A block the model did not run: the previous output fades out, the next fades in."""
        return self._sola.conceal()

    def process(self, block: Audio) -> Audio:
        return self.finish(self.engine.infer([self.prepare(block)])[0])


class SeedVCEngine(Engine):
    """Seed-VC v1 real-time model shared by every session of a process."""

    name = "seedvc"

    settings_type = SeedVCSettings
    label = "Seed-VC"
    needs_gpu = True

    def __init__(
        self, models: SeedVCModels, defaults: SeedVCSettings | None = None, compile_mode: str = "off"
    ) -> None:
        self.models = models
        self.sample_rate = models.sample_rate
        self._defaults = defaults or SeedVCSettings()
        self.compile_mode = compile_mode
        self._estimator = compiled_estimator(models, compile_mode)
        if models.random_weights:
            log.warning("Seed-VC engine runs with RANDOM weights (%s): output is noise", models.origin)

    @property
    def defaults(self) -> SeedVCSettings:
        return self._defaults

    @property
    def torch_device(self) -> torch.device:
        return self.models.device

    # -- voices ---------------------------------------------------------------------------------

    def prepare_voice(self, reference: Audio, sample_rate: int) -> VoiceProfile:
        samples = np.asarray(reference, dtype=np.float32)
        if samples.ndim != 1 or samples.shape[0] == 0 or not np.all(np.isfinite(samples)):
            raise InvalidAudioError("the reference must be a non-empty, finite mono signal")
        at_rate = resample(samples, sample_rate, self.sample_rate)
        kept = np.ascontiguousarray(at_rate[: int(MAX_REFERENCE_S * self.sample_rate)])
        if kept.shape[0] < MIN_PROMPT_S * self.sample_rate:
            raise InvalidAudioError(f"the reference is shorter than {MIN_PROMPT_S} s")
        profile = VoiceProfile(
            self.name, self.sample_rate, kept.shape[0] / self.sample_rate, SeedVCVoice(kept)
        )
        self.session_prompt(profile, self.defaults.max_prompt_length)  # the common case, done now
        return profile

    def session_prompt(self, voice: VoiceProfile, max_prompt_s: float) -> PromptFeatures:
        """The prompt a streaming session uses: the voice's reference cut to a prompt bucket (so a
        batch's shapes come from a small set whatever the voices' lengths; see ``shapes``)."""
        reference = self._voice_features(voice).reference
        length = prompt_bucket(max_prompt_s, reference.shape[0], self.sample_rate)
        return self.prompt_features(voice, length / self.sample_rate)

    def _voice_features(self, voice: VoiceProfile) -> SeedVCVoice:
        features = voice.features
        if voice.engine != self.name or not isinstance(features, SeedVCVoice):
            raise ConfigurationError(f"voice profile was prepared by engine {voice.engine!r}, not seedvc")
        return features

    def prompt_features(self, voice: VoiceProfile, seconds: float) -> PromptFeatures:
        """Prompt features of a voice for a prompt of exactly ``seconds`` (its first seconds, as
        offline conversion asks), memoised."""
        features = self._voice_features(voice)
        length = min(features.reference.shape[0], round(seconds * self.sample_rate))
        with features.lock:
            cached = features.prompts.get(length)
        if cached is not None:
            return cached
        computed = self._compute_prompt(features.reference[:length])
        with features.lock:
            return features.prompts.setdefault(length, computed)

    @torch.inference_mode()
    def _compute_prompt(self, prompt: Audio) -> PromptFeatures:
        """As Seed-VC's real-time inference does for its reference: XLS-R features and CAM++ style
        of the 16 kHz prompt, its mel at the model rate, and the features length-regulated to it."""
        m = self.models
        prompt_16k = resample(prompt, self.sample_rate, CONTENT_RATE)
        wav16 = torch.from_numpy(prompt_16k).unsqueeze(0).to(self.torch_device)
        content = m.content(wav16)
        style = m.style(prompt_16k)
        mel = m.mel(torch.from_numpy(prompt).unsqueeze(0).to(self.torch_device))
        lengths = torch.tensor([mel.shape[-1]], device=self.torch_device)
        condition = m.length_regulator(content, ylens=lengths, n_quantizers=3, f0=None)[0]
        return PromptFeatures(condition=condition.float(), mel=mel, style=style)

    # -- sessions -------------------------------------------------------------------------------

    def open_session(self, voice: VoiceProfile, settings: SessionSettings | None = None) -> SeedVCSession:
        return SeedVCSession(self, voice, self.own_settings(settings, SeedVCSettings))

    def autocast(self, dtype: str) -> AbstractContextManager[Any]:
        if dtype == "fp32" or self.torch_device.type != "cuda":
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=DTYPES[dtype])

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[PromptFeatures],
        condition: torch.Tensor,
        noises: Sequence[torch.Tensor],
        diffusion_steps: int,
        cfg_rate: float,
    ) -> torch.Tensor:
        """Mel frames for ``condition`` (batch, frames, width), each item after its own prompt.

        Items are laid out as ``[prompt_i, condition_i]`` and padded at the end to the longest; the
        DiT masks attention to padding and positions are absolute from the sequence start, so an item
        comes out as it would alone. Returns (batch, 80, frames)."""
        batch, frames = condition.shape[0], condition.shape[1]
        lengths = [p.frames + frames for p in prompts]
        total = max(lengths)
        mels = prompts[0].mel.shape[1]
        mu = condition.new_zeros((batch, total, condition.shape[2]))
        prompt_x = condition.new_zeros((batch, mels, total))
        x = condition.new_zeros((batch, mels, total))
        in_prompt = torch.zeros((batch, 1, total), dtype=torch.bool, device=condition.device)
        for i, prompt in enumerate(prompts):
            p = prompt.frames
            mu[i, :p] = prompt.condition[0]
            mu[i, p : p + frames] = condition[i]
            prompt_x[i, :, :p] = prompt.mel[0]
            x[i, :, : lengths[i]] = noises[i][0, :, : lengths[i]]
            in_prompt[i, :, :p] = True
        style = torch.cat([p.style for p in prompts])
        x_lens = torch.tensor(lengths, device=condition.device)
        x = self._euler(x, in_prompt, x_lens, prompt_x, mu, style, diffusion_steps, cfg_rate)
        return torch.stack([x[i, :, p.frames : p.frames + frames] for i, p in enumerate(prompts)])

    def _euler(
        self,
        x: torch.Tensor,
        in_prompt: torch.Tensor,
        x_lens: torch.Tensor,
        prompt_x: torch.Tensor,
        mu: torch.Tensor,
        style: torch.Tensor,
        steps: int,
        cfg_rate: float,
    ) -> torch.Tensor:
        """Fixed-step Euler integration of the flow from noise (t=0) to mel (t=1), as Seed-VC's CFM
        does: the prompt region of x is held at zero, the prompt mel enters as a condition; with
        guidance the conditioned and unconditioned velocities come from one doubled batch."""
        estimator = self._estimator
        batch = x.shape[0]
        t_span = torch.linspace(0.0, 1.0, steps + 1, device=x.device)
        x = x.masked_fill(in_prompt, 0.0)
        if cfg_rate > 0:
            prompt_x2 = torch.cat([prompt_x, torch.zeros_like(prompt_x)])
            style2 = torch.cat([style, torch.zeros_like(style)])
            mu2 = torch.cat([mu, torch.zeros_like(mu)])
            x_lens2 = torch.cat([x_lens, x_lens])
        for step in range(steps):
            t = t_span[step]
            dt = t_span[step + 1] - t
            if cfg_rate > 0:
                both = estimator(torch.cat([x, x]), prompt_x2, x_lens2, t.expand(2 * batch), style2, mu2)
                guided, free = both.chunk(2, dim=0)
                velocity = (1.0 + cfg_rate) * guided - cfg_rate * free
            else:
                velocity = estimator(x, prompt_x, x_lens, t.expand(batch), style, mu)
            x = (x + dt * velocity).masked_fill(in_prompt, 0.0)
        return x

    @torch.inference_mode()
    def infer(self, requests: Sequence[BlockRequest]) -> list[Audio]:
        """Run the model for blocks of one or more sessions with equal settings; returns each
        session's SOLA frame (``layout.frame`` samples)."""
        if not requests:
            return []
        first = requests[0]
        if any(r.batch_key != first.batch_key for r in requests):
            raise ValueError("requests in one batch must share block layout, steps, cfg and dtype")
        layout, m = first.layout, self.models
        with self.autocast(first.dtype):
            wav16 = torch.from_numpy(np.stack([r.content_16k for r in requests])).to(self.torch_device)
            content = m.content(wav16)[:, layout.skipped_content_frames :]
            lengths = torch.full((len(requests),), layout.target_frames, device=self.torch_device)
            condition = m.length_regulator(content, ylens=lengths, n_quantizers=3, f0=None)[0]
            mel = self.generate(
                [r.prompt for r in requests],
                condition.float(),
                [r.noise for r in requests],
                first.diffusion_steps,
                first.cfg_rate,
            )
        # The vocoder runs in float32 (its iSTFT has no half-precision path), the whole batch in one
        # pass; each session's excitation noise still comes from its own seed (PerItemSeededSource).
        end = layout.target_frames * layout.hop - layout.extra_right
        waves = m.vocode_batch(mel.float(), [r.vocoder_seed for r in requests])
        cut = waves[:, end - layout.frame : end].float().cpu().numpy()
        return [np.ascontiguousarray(row) for row in cut]

    batched_forward = True
    #: a quick and a cheaper block, a clean and a fast step count: at most 4 shapes (x dtypes)
    call_presets: ClassVar[dict[str, tuple[Any, ...]]] = {
        "block_time": (0.18, 0.3),
        "diffusion_steps": (4, 10),
    }

    def batch_key(self, request: Any) -> Hashable:
        if not isinstance(request, BlockRequest):
            raise TypeError(f"seedvc takes BlockRequest, not {type(request).__name__}")
        return request.batch_key

    def run_batch(self, sessions: Sequence[EngineSession], requests: Sequence[Any]) -> list[Any]:
        """One forward pass for requests of one ``batch_key`` (made by ``SeedVCSession.prepare``)."""
        batch = [r for r in requests if isinstance(r, BlockRequest)]
        if len(batch) != len(requests):
            raise TypeError("seedvc runs only requests made by SeedVCSession.prepare")
        return self.infer(batch)

    def warm_voice(self, voice: VoiceProfile, settings: SessionSettings | None) -> None:
        self.session_prompt(voice, self.own_settings(settings, SeedVCSettings).max_prompt_length)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "device": str(self.torch_device),
            "dtype": self.defaults.dtype,
            "random_weights": self.models.random_weights,
            "size": self.models.size,
            "compile": self.compile_mode,
            "weights": self.models.origin,
            "defaults": self.defaults.values(),
        }


def create_seedvc_engine(
    device: str = "auto",
    cache_dir: Path | str | None = None,
    local_paths: Mapping[str, Path | str] | None = None,
    allow_download: bool = False,
    random_weights: bool = False,
    seed: int = 0,
    defaults: SeedVCSettings | None = None,
    size: str = "full",
    compile_mode: str = "off",
) -> SeedVCEngine:
    """The engine with published weights (from the cache, local paths, or the hub when allowed), or
    with random weights only when asked explicitly: missing weights raise ModelUnavailableError and
    never fall back to random ones. ``size`` "reduced" (random weights only) is the small model for
    CPU tests and benchmarks; ``compile_mode`` is one of ``COMPILE_MODES``."""
    from vcstream.engines.seedvc.model import build_random, load_pretrained
    from vcstream.engines.seedvc.weights import resolve_weights

    if size != "full" and not random_weights:
        raise ConfigurationError(f"model size {size!r} exists only with random weights (benchmarks, tests)")
    if random_weights:
        models = build_random(device, seed, size)
    else:
        models = load_pretrained(resolve_weights(cache_dir, local_paths, allow_download), device)
    log.info("Seed-VC loaded on %s from %s", models.device, models.origin)
    return SeedVCEngine(models, defaults, compile_mode)


def compiled_estimator(models: SeedVCModels, mode: str) -> Any:
    """The DiT estimator as the Euler loop calls it: itself ("off"), or wrapped by torch.compile.
    The wrapper compiles on first call per input shape (buckets keep those few); the DiT's mask from
    ``x_lens`` is data-dependent, so dynamo splits the graph there and compiles the rest. The wrapper
    shares the module's weights and leaves the module itself unchanged."""
    if mode not in COMPILE_MODES:
        raise ConfigurationError(f"compile mode {mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    if mode == "off":
        return models.estimator
    if mode == "cudagraphs" and models.device.type != "cuda":
        raise ConfigurationError(f"compile mode cudagraphs needs a CUDA device, not {models.device}")
    return torch.compile(models.estimator, mode="reduce-overhead" if mode == "cudagraphs" else None)
