"""A converting WebRTC call: a ``WebRtcPeer`` whose received audio goes through one engine session
and back out on the same peer.

Knows nothing of WebSockets: what the peer reports (its description, ICE candidates, states,
failures) is handed through ``to_loop`` to a ``CallEvents`` (the server: a signalling connection on
the asyncio loop). Built and closed on a worker thread (``open``/``close`` block). The peer's
listener methods run on GStreamer threads: received audio is fed to the live session there, and a
worker of the engine's block scheduler pushes converted audio into the peer's appsrc; neither waits
on inference.

The call runs at the engine's sample rate: the peer's pipeline converts between it and Opus's 48 kHz
(``audioresample``, in C), so no buffer is resampled in Python on its way in or out.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, VoiceProfile
from vcstream.engines.settings import SessionSettings
from vcstream.media.webrtc import OPUS_RATE, PeerConfig, PeerStats, WebRtcPeer
from vcstream.streaming.live import LiveSession, LiveStats
from vcstream.streaming.scheduler import BlockScheduler
from vcstream.transports.live_transport import LiveTransport

__all__ = ["AudioTap", "Call", "CallEvents"]

#: Opus frames per second (``WebRtcPeer`` sends 20 ms frames)
_FRAMES_PER_S = 50


def call_rate(engine: Engine) -> int:
    """The rate a call hands audio to and from its peer: the engine's own, when whole 20 ms frames
    exist at it (all engines so far); else Opus's, and the live session resamples."""
    return engine.sample_rate if engine.sample_rate % _FRAMES_PER_S == 0 else OPUS_RATE


class CallEvents(Protocol):
    """What a ``Call`` reports, called on the asyncio loop (``Connection`` implements it)."""

    def on_answer(self, sdp: str) -> None: ...

    def on_local_candidate(self, mline_index: int, candidate: str) -> None: ...

    def on_peer_state(self, name: str, value: str) -> None: ...

    def on_peer_error(self, kind: str, message: str) -> None: ...


class AudioTap(Protocol):
    """Sees a call's audio on its way (``vcstream.quality.live.CallQuality``): called on media
    threads with samples at ``rate`` it must only copy, never keep or wait on."""

    def on_input(self, samples: Audio, rate: int) -> None: ...

    def on_output(self, samples: Audio, rate: int) -> None: ...


class Call(LiveTransport):
    """One WebRTC session: a ``WebRtcPeer`` and the ``LiveSession`` converting between its directions."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        voice: VoiceProfile,
        settings: SessionSettings,
        to_loop: Callable[..., None],
        events: CallEvents,
        *,
        scheduler: BlockScheduler,
        on_block: Callable[[float], None] | None = None,
        started: float | None = None,
        tap: AudioTap | None = None,
    ) -> None:
        #: perf_counter time of the offer: the timeline counts from it
        self.started = time.perf_counter() if started is None else started
        #: ms from the offer to: answer, connected, first_audio_in, first_audio_out
        self.timeline: dict[str, float] = {}
        self.name = name
        self._to_loop = to_loop
        self._events = events
        #: what sees the caller's audio and the converted audio (live quality), if anything
        self.tap = tap
        self.peer: WebRtcPeer | None = None
        rate = call_rate(engine)
        super().__init__(
            engine,
            voice,
            settings,
            scheduler=scheduler,
            io_rate=rate,
            frame_samples=rate // _FRAMES_PER_S,
            name=name,
            on_block=on_block,
        )

    @classmethod
    def open(
        cls,
        name: str,
        engine: Engine,
        voice: VoiceProfile,
        settings: SessionSettings,
        to_loop: Callable[..., None],
        events: CallEvents,
        peer_config: PeerConfig,
        *,
        scheduler: BlockScheduler,
        on_block: Callable[[float], None] | None = None,
        started: float | None = None,
        tap: AudioTap | None = None,
    ) -> Call:
        """Open the engine session and the peer (blocking)."""
        call = cls(
            name,
            engine,
            voice,
            settings,
            to_loop,
            events,
            scheduler=scheduler,
            on_block=on_block,
            started=started,
            tap=tap,
        )
        try:
            config = dataclasses.replace(peer_config, audio_rate=call.io_rate)
            call.peer = WebRtcPeer(call, config, name=name)
        except BaseException:
            call.close_session()
            raise
        return call

    def _mark(self, event: str) -> None:
        if event not in self.timeline:
            self.timeline[event] = 1000 * (time.perf_counter() - self.started)

    # -- PeerListener (GStreamer threads) ---------------------------------------------------------

    def on_description(self, kind: str, sdp: str) -> None:
        self._mark("answer")
        self._to_loop(self._events.on_answer, sdp)

    def on_ice_candidate(self, mline_index: int, candidate: str) -> None:
        self._to_loop(self._events.on_local_candidate, mline_index, candidate)

    def on_state(self, name: str, value: str) -> None:
        if name == "connection" and value == "connected":
            self._mark("connected")
        self._to_loop(self._events.on_peer_state, name, value)

    def on_audio(self, samples: Audio) -> None:
        if "first_audio_in" not in self.timeline:
            self._mark("first_audio_in")
        self.feed(samples)
        if self.tap is not None:
            self.tap.on_input(samples, self.io_rate)

    def on_error(self, kind: str, message: str) -> None:
        self._to_loop(self._events.on_peer_error, kind, message)

    # -- LiveSession output (a scheduler worker) ---------------------------------------------------

    def _deliver(self, samples: Audio) -> None:
        peer = self.peer
        if peer is not None and peer.push(samples) and "first_audio_out" not in self.timeline:
            self._mark("first_audio_out")
        if self.tap is not None:
            self.tap.on_output(samples, self.io_rate)

    # -- control (worker threads) -----------------------------------------------------------------

    def sample(self, stats_timeout_s: float = 0.5) -> tuple[LiveSession, LiveStats | None, PeerStats]:
        """The live session, its statistics (None once closed) and the peer's (``WebRtcPeer.stats``)."""
        live, peer = self.session, self.peer
        stats = self.stats()
        return live, stats, peer.stats(stats_timeout_s) if peer is not None else PeerStats()

    def close(self) -> None:
        """Stop media first (no more input), then the live session and engine session."""
        with self._lock:
            self._closed = True  # no reopen from here on
            peer, self.peer = self.peer, None
        try:
            if peer is not None:
                peer.close()
        finally:
            self.close_session()
