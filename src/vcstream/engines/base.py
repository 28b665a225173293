"""The engine interface every voice conversion backend implements.

An ``Engine`` is loaded once per process and shared (weights, caches). It turns a reference recording
into a ``VoiceProfile`` (all per-voice work done once) and opens any number of independent
``EngineSession``s, each holding only its own streaming state. Sessions take fixed-size blocks at the
engine's sample rate and return blocks of the same size.

A block goes through three steps, so a scheduler can batch the middle one across sessions:
``EngineSession.prepare`` (per-session bookkeeping, no model work), ``Engine.run_batch`` (the model, for
any number of prepared requests sharing a ``batch_key``) and ``EngineSession.finish`` (per-session
splicing). ``EngineSession.process`` is all three for one block. The defaults suit engines without a
batched forward pass: ``prepare`` only checks the block and ``run_batch`` runs each session's
``process``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from vcstream.audio.types import Audio
from vcstream.engines.settings import SessionSettings

S = TypeVar("S", bound=SessionSettings)


@dataclass(frozen=True)
class VoiceProfile:
    """Per-voice features an engine computed from a reference. ``features`` is engine-specific and
    must not be mutated by sessions (one profile is shared by every session using that voice)."""

    engine: str
    sample_rate: int
    duration_s: float
    features: Any = field(repr=False)


class EngineSession(ABC):
    """Streaming state of one conversion stream. Not thread-safe: one caller at a time."""

    #: samples per block at ``sample_rate``; ``process`` takes and returns exactly this many
    block_size: int
    sample_rate: int

    @property
    @abstractmethod
    def latency_samples(self) -> int:
        """Algorithmic delay of this session's output against its input, in samples at
        ``sample_rate`` (excluding inference time): output sample n corresponds to input sample
        n - latency_samples."""

    @abstractmethod
    def process(self, block: Audio) -> Audio:
        """Convert one block (``block_size`` float32 samples) and return ``block_size`` samples."""

    @abstractmethod
    def set_voice(self, voice: VoiceProfile) -> None:
        """Switch the target voice; takes effect from the next block."""

    def prepare(self, block: Audio) -> Any:
        """Step 1 of a block: the session's own work before the model runs (advances its state).
        Returns the request ``Engine.run_batch`` takes; by default the checked block itself."""
        return check_block(block, self.block_size)

    def finish(self, result: Any) -> Audio:
        """Step 3 of a block: turn what ``Engine.run_batch`` returned into ``block_size`` samples."""
        return np.asarray(result, dtype=np.float32)

    def conceal(self) -> Audio:
        """Output standing in for a block the model did not run (skipped for its deadline, or
        failed): silence by default; engines that splice frames fade out what they hold."""
        return np.zeros(self.block_size, dtype=np.float32)

    def close(self) -> None:  # noqa: B027 - optional hook, most sessions hold nothing to release
        """Release per-session resources."""


class Engine(ABC):
    """A loaded voice conversion model, shared by all sessions of a process."""

    name: str
    #: the rate blocks are exchanged at (the streaming core resamples I/O to and from it)
    sample_rate: int
    #: this engine's session settings (fields, schema, validation)
    settings_type: ClassVar[type[SessionSettings]]

    @property
    def defaults(self) -> SessionSettings:
        """The settings a session gets unless told otherwise."""
        return self.settings_type()

    def settings(self, **values: object) -> SessionSettings:
        """The defaults with ``values`` applied, validated (SettingsError names what is allowed)."""
        return self.defaults.updated(values)

    @abstractmethod
    def prepare_voice(self, reference: Audio, sample_rate: int) -> VoiceProfile:
        """Compute a reusable profile from a validated mono float32 reference recording."""

    @abstractmethod
    def open_session(self, voice: VoiceProfile, settings: SessionSettings | None = None) -> EngineSession:
        """Open an independent streaming session (``settings``: this engine's ``settings_type``,
        default ``defaults``)."""

    def own_settings(self, settings: SessionSettings | None, kind: type[S]) -> S:
        """``settings`` checked to be this engine's kind (``defaults`` when None)."""
        chosen = self.defaults if settings is None else settings
        if not isinstance(chosen, kind):
            raise TypeError(f"engine {self.name} takes {kind.__name__}, not {type(chosen).__name__}")
        return chosen

    #: the model runs many sessions' requests in one forward pass (``run_batch`` is not a loop)
    batched_forward: ClassVar[bool] = False
    #: per-call values a server offers callers on a GPU, so calls share batch shapes (the default
    #: value is always offered too; see ``vcstream.service.call_choices``)
    call_presets: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def batch_key(self, request: Any) -> Hashable:
        """Prepared requests with equal keys may share one ``run_batch`` call."""
        return self.name

    def run_batch(self, sessions: Sequence[EngineSession], requests: Sequence[Any]) -> list[Any]:
        """Step 2 of a block, for prepared requests with one ``batch_key`` (one per session, in
        order). The default runs each session's ``process`` on its checked block."""
        return [session.process(r) for session, r in zip(sessions, requests, strict=True)]

    def warm_voice(self, voice: VoiceProfile, settings: SessionSettings | None) -> None:  # noqa: B027
        """Compute ahead whatever ``EngineSession.set_voice`` would compute for ``voice`` (so a
        switch costs a real-time thread nothing). Engines whose switch is cheap do nothing."""

    def process_batch(self, sessions: Sequence[EngineSession], blocks: Sequence[Audio]) -> list[Audio]:
        """One block for each of several sessions, all three steps; requests with equal
        ``batch_key`` share one ``run_batch``."""
        if len(sessions) != len(blocks):
            raise ValueError("one block per session")
        requests = [s.prepare(b) for s, b in zip(sessions, blocks, strict=True)]
        groups: dict[Hashable, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(self.batch_key(request), []).append(i)
        results: dict[int, Any] = {}
        for indices in groups.values():
            done = self.run_batch([sessions[i] for i in indices], [requests[i] for i in indices])
            results.update(zip(indices, done, strict=True))
        return [s.finish(results[i]) for i, s in enumerate(sessions)]

    def describe(self) -> dict[str, Any]:
        """What the engine is running on, for logs, health checks and benchmarks."""
        return {"engine": self.name, "sample_rate": self.sample_rate}

    # -- what an operator and a user are told --------------------------------------------------------

    #: the engine as people call it (logs, the page)
    label: ClassVar[str] = "engine"
    #: what to expect of it, when something ("quality is lower than Seed-VC")
    caveat: ClassVar[str] = ""
    #: slower than real time without a CUDA GPU
    needs_gpu: ClassVar[bool] = False

    @property
    def device(self) -> str:
        return str(self.describe().get("device", "cpu"))

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def note(self) -> str:
        """One sentence for people: what runs, on what, and what to expect."""
        if self.needs_gpu and not self.on_gpu:
            return f"{self.label} on the CPU ({self.device}): far slower than real time, use a GPU"
        return f"{self.label} - {self.caveat}" if self.caveat else f"{self.label} on {self.device}"


def check_block(block: Audio, block_size: int) -> Audio:
    """Validate a block handed to ``EngineSession.process``; returns it as contiguous float32."""
    if block.ndim != 1 or block.shape[0] != block_size:
        raise ValueError(f"expected a mono block of {block_size} samples, got shape {block.shape}")
    return np.ascontiguousarray(block, dtype=np.float32)


def seconds_to_samples(seconds: float, sample_rate: int, multiple_of: int = 1) -> int:
    """Round a duration to a whole number of ``multiple_of``-sample units (at least one unit)."""
    units = max(1, round(seconds * sample_rate / multiple_of))
    return units * multiple_of
