"""What every live transport shares: one engine session (``LiveSession``) between a media input and a
media output, framed to whole Opus frames.

Block alignment: the engine needs a whole block (plus its input resampler's few samples of
look-ahead) before it can convert, and audio arrives one Opus frame at a time. Unaligned, every
block would wait for the frame after the one that completes it (up to 20 ms more, on every block).
Each session is therefore primed with exactly that look-ahead in silence, so blocks complete on the
frame that ends them; likewise its output starts with the few samples that put block ends on Opus
frame ends (for block times that are multiples of the frame size). When the input stream ends, the
block in progress is completed with silence (``flush``) so the end of what was said goes out at once.

Threads: ``feed`` and ``flush`` run on the input's media thread and never wait on inference;
``_deliver`` runs on a worker of the engine's ``BlockScheduler``; ``set_voice``, ``reopen`` and
``close_session`` block briefly (engine session setup, waiting for a block in progress) and belong on
a worker or control thread.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from vcstream.audio.resample import make_resampler
from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, VoiceProfile
from vcstream.engines.settings import SessionSettings
from vcstream.streaming.converter import StreamConverter
from vcstream.streaming.live import LiveSession, LiveStats
from vcstream.streaming.scheduler import BlockScheduler


def input_lead_samples(converter: StreamConverter) -> int:
    """Input samples the converter needs beyond a whole block before it converts that block (its
    input resampler's look-ahead), found by running a fresh resampler of the same kind."""
    session = converter.session
    resampler = make_resampler(converter.io_rate, session.sample_rate)
    block_in = round(session.block_size * converter.io_rate / session.sample_rate)
    produced = resampler.process(np.zeros(block_in, dtype=np.float32)).shape[0]
    extra = 0
    while produced < session.block_size and extra < block_in:  # a handful of samples in practice
        produced += resampler.process(np.zeros(1, dtype=np.float32)).shape[0]
        extra += 1
    return extra


@dataclass
class _Framing:
    """The alignment state of one live session (a re-opened session starts its own)."""

    frame_samples: int
    lead_samples: int
    pad_samples: int = 0
    started: bool = False

    def align_first(self, samples: Audio) -> Audio:
        """The first output is a block minus the output resampler's look-ahead; a few samples of
        silence before it put every later block end on a frame end, so the encoder sends a block's
        last frame with the block instead of with the next one."""
        if self.started:
            return samples
        self.started = True
        self.pad_samples = -samples.shape[0] % self.frame_samples
        return np.concatenate([np.zeros(self.pad_samples, dtype=np.float32), samples])


@dataclass(frozen=True)
class _Stream:
    """A live session and its framing, swapped together on ``reopen``."""

    session: LiveSession
    framing: _Framing


class LiveTransport(ABC):
    """A ``LiveSession`` at ``io_rate`` whose output is framed to ``frame_samples`` and handed to
    ``_deliver`` (a subclass sends it). Subclasses feed their input to ``feed`` and call
    ``close_session`` after stopping their input. ``scheduler`` runs the blocks (the engine's)."""

    def __init__(
        self,
        engine: Engine,
        voice: VoiceProfile,
        settings: SessionSettings | None,
        *,
        scheduler: BlockScheduler,
        io_rate: int,
        frame_samples: int,
        name: str,
        max_backlog_s: float | None = None,
        on_block: Callable[[float], None] | None = None,
    ) -> None:
        if scheduler.engine is not engine:
            raise ValueError("the scheduler runs another engine")
        self.engine = engine
        self.scheduler = scheduler
        self.voice = voice
        self.io_rate = io_rate
        self.frame_samples = frame_samples
        self._name = name
        self._max_backlog_s = max_backlog_s
        self._on_block = on_block
        #: serialises swapping the session (voice, settings) against closing
        self._lock = threading.Lock()
        #: closed: no more reopen or statistics; stopped: the live session was stopped
        self._closed = self._stopped = False
        self.flushes = 0
        self._stream = self._open(settings)
        #: the settings of the running session (None: the engine's defaults)
        self.settings = settings

    def _open(self, settings: SessionSettings | None) -> _Stream:
        """A new engine session, primed with its input look-ahead."""
        converter = StreamConverter(self.engine, self.voice, self.io_rate, settings, on_block=self._on_block)
        try:
            framing = _Framing(self.frame_samples, input_lead_samples(converter))
        except BaseException:
            converter.close()
            raise
        session = LiveSession(
            converter,
            partial(self._framed, framing),
            self.scheduler,
            max_backlog_s=self._max_backlog_s,
            name=self._name,
        )
        if framing.lead_samples:
            session.feed(np.zeros(framing.lead_samples, dtype=np.float32))
        return _Stream(session, framing)

    # -- figures of the running session -----------------------------------------------------------

    @property
    def session(self) -> LiveSession:
        """The running live session (a new one after ``reopen``)."""
        return self._stream.session

    @property
    def converter(self) -> StreamConverter:
        return self._stream.session.converter

    @property
    def lead_samples(self) -> int:
        """Silence the session was primed with (its input resampler's look-ahead)."""
        return self._stream.framing.lead_samples

    @property
    def output_pad_samples(self) -> int:
        """Silence put before the session's first output (0 until it produced some)."""
        return self._stream.framing.pad_samples

    @property
    def error(self) -> BaseException | None:
        """The engine's latest failure (the transport keeps running; failed blocks are counted)."""
        return self._stream.session.error

    def stats(self) -> LiveStats | None:
        """The running session's statistics; None once closed."""
        return None if self._closed else self._stream.session.snapshot()

    # -- media threads ----------------------------------------------------------------------------

    def feed(self, samples: Audio) -> None:
        """Input audio at ``io_rate``: hand over and return."""
        self._stream.session.feed(samples)

    def flush(self) -> None:
        """The input stream ended: complete the block in progress with silence, so the end of what
        was said goes out now instead of with the next stream. The next stream then starts on a
        block boundary again."""
        stream = self._stream
        session, framing = stream.session, stream.framing
        counters = session.counters
        converted = counters.samples_in - counters.dropped_samples - framing.lead_samples
        block = session.converter.block_size
        partial_block = converted % block
        if partial_block:
            session.feed(np.zeros(block - partial_block, dtype=np.float32))
        self.flushes += 1

    def _framed(self, framing: _Framing, samples: Audio) -> None:
        """Scheduler worker: frame, then deliver."""
        self._deliver(framing.align_first(samples))

    @abstractmethod
    def _deliver(self, samples: Audio) -> None:
        """Send converted audio (a scheduler worker; must not block)."""

    # -- control ----------------------------------------------------------------------------------

    def set_voice(self, voice: VoiceProfile) -> None:
        """Switch voice from the next block (a re-opened session keeps it)."""
        with self._lock:
            self.voice = voice
            self._stream.session.set_voice(voice)

    def reopen(self, settings: SessionSettings) -> None:
        """New engine settings: a new engine session, same media (no renegotiation)."""
        with self._lock:
            if self._closed:
                return
            old, self._stream = self._stream, self._open(settings)
            self.settings = settings
        old.session.stop()

    def close_session(self) -> None:
        """Stop the session (after its block in progress) and close the engine session (idempotent)."""
        with self._lock:
            self._closed = True
            if self._stopped:
                return
            self._stopped = True
            session = self._stream.session
        session.stop()
