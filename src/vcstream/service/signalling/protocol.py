"""The signalling protocol at ``/ws``: what goes over the WebSocket and how a message is checked.

Protocol v1
===========

Every message is one JSON object in one text frame, with ``"v": 1`` and a ``"type"``. The browser
makes the offer; ICE candidates trickle both ways. Frames above 64 KiB, binary frames, invalid JSON,
unknown types and out-of-order messages each get an ``error`` and never affect other connections.

Budgets: a connection may send 200 messages at once and 50 a second after that; a message answered
with an ``error`` counts 4. Past the budget it gets ``error`` ``rate_limited`` and is closed (1008)
at once, without the server reading any more of it. One client address may open 20 connections at
once and 2 a second after that, and hold at most 20 open; beyond, the upgrade is answered ``429``
``too_many_connections`` with ``Retry-After``. A browser making calls never comes near either.

Client -> server
  ``hello``     ``{"reserve": true?, "wait": true?}``, within 10 s of connecting. The server answers
                ``ready`` (or ``error`` ``server_full`` with ``retry_after_s``, ``server_draining`` or
                ``server_not_ready``, and closes). ``reserve``: the client is about to call, and its
                place is held from now for 10 s (the offer then cannot be refused for lack of room);
                without it the place is taken at the offer. ``wait`` (with ``reserve``): on a full
                server, queue for a place instead of being refused: the server answers ``waiting`` and
                keeps the connection; places given back go to the waiters first come first served,
                each announced with ``ready`` and held as a reservation, as if the hello had just
                found it free. The queue holds twice the server's places; beyond, and without
                ``wait``, a full server answers ``server_full`` and closes as before. A server that
                does not know ``wait`` ignores it. A connection without a call (waiting or not) is
                closed (``error`` ``timeout``) after 10 minutes without a message.
  ``offer``     ``{"sdp": "v=0...", "voice": "<voice id>", "settings": {...}?}``: starts the session
                (audio only, Opus, sendrecv). Answered with ``answer``; one offer per connection (no
                renegotiation: voice and settings change without it).
  ``ice``       ``{"candidate": "candidate:...", "sdpMLineIndex": 0}``; ``"candidate": null`` marks the
                end of the client's candidates. Only after ``offer``.
  ``voice``     ``{"voice": "<voice id>"}``: choose the voice, or switch it mid-call; the switch takes
                effect from the next block. Acknowledged with ``voice`` ``{"voice", "name"}``.
  ``settings``  ``{"settings": {"block_time": 0.2, "diffusion_steps": 10}}``: keys from the
                ``settings_schema`` of ``ready``; a change mid-call re-opens the engine session (never
                renegotiates). Acknowledged with ``settings`` ``{"settings": {...all current}}``.
  ``bye``       ``{}``: end the session; the server answers ``bye`` and closes the socket.

Server -> client
  ``ready``     ``{"session", "ice_servers": [RTCIceServer...], "engine": {"name", "note", "cpu_fallback",
                "device", "sample_rate"}, "voices": [{"id", "name", "duration_s"}], "settings": {...},
                "settings_schema": {"block_time": {"type", "unit", "min", "max", "step", "default"},
                ...}, "max_message_bytes", "stats_interval_s"}``. TURN entries carry time-limited
                credentials (coturn's REST scheme, see ``vcstream.service.ice``).
  ``waiting``   ``{"position", "retry_after_s"}``: the answer to a ``hello`` with ``wait`` on a full
                server, and again whenever the position changes (1: the next place is this
                connection's). Not an error: the connection stays open, and ``ready`` follows when a
                place is free; ``offer`` before it is ``unexpected``. A drain turns waiters away at
                once (``error`` ``server_draining``, fatal). ``retry_after_s``: the hint a refused
                client would have had, for a client that also tries elsewhere (behind a balancer).
  ``answer``    ``{"sdp"}``.
  ``ice``       ``{"candidate", "sdpMLineIndex"}``; ``"candidate": null`` once the server gathered all.
  ``state``     ``{"connection"|"ice"|"gathering": "<state>"}``: the server side's WebRTC states.
  ``stats``     every ``stats_interval_s``: ``latency_ms`` (estimate, below), ``algorithmic_ms``,
                ``inference_ms`` (median) and ``inference_ms_p95``, ``block_ms``, ``backlog_ms``,
                ``blocks``, ``output_ms`` (converted audio sent), ``late_blocks``, ``skipped_blocks``
                (concealed: the device could not convert them in time), ``dropped_ms``,
                ``drop_events``, ``engine_errors``, ``rtt_ms``, ``jitter_ms`` (of the audio the server
                receives), ``remote_jitter_ms`` and ``remote_packets_lost`` (the client's reports on the
                audio it receives), loss over the last interval both ways: ``received_loss_pct`` (the
                client's packets lost on the way in), ``sent_loss_pct`` (the server's, as the client's
                receiver report says), ``fec`` (the server sends Opus in-band FEC),
                ``fec_expected_loss_pct`` (the loss its encoder protects against) and
                ``concealed_pct`` (received audio the server's decoder made up: FEC or concealment),
                ``received_totals`` (the audio received since the call began: ``packets``,
                ``packets_lost``, ``red_packets`` (0: the caller sends no RED), ``red_recovered``
                (lost packets rebuilt from the RED copies later packets carried), ``concealed_ms``
                and ``decoded_ms``),
                ``retransmissions`` (NACK/RTX since the call began, null without NACK: ``requested``,
                ``recovered`` and ``late`` of the audio the server receives, ``asked`` and ``resent``
                of the audio it sends),
                ``bitrate_in_kbps``, ``bitrate_out_kbps``,
                ``voice_similarity`` and ``own_voice_similarity`` (live quality: CAM++ speaker
                similarity, cosine clipped to 0..1, of the last few seconds of converted speech to the
                chosen voice and to the caller's own speech; null until the first estimate, or with
                ``VCSTREAM_LIVE_QUALITY=0``; ``vcstream.quality.live``),
                and ``timeline`` (ms from the offer to the
                answer, to the connection, to the first audio in and the first converted audio out).
  ``voice``, ``settings``: acknowledgements (above).
  ``error``     ``{"code", "message", "fatal", "retry_after_s"?}``; after a fatal one the server closes
                the socket. ``retry_after_s`` (``server_full``): when a place is likely to be free.
  ``bye``       ``{"reason": "client"|"shutdown"|...}``, then the socket closes.
  ``draining``  ``{"grace_s"}``: this server is going away (SIGTERM). The call keeps running for up to
                ``grace_s`` seconds; the client should open a new connection to the same URL (a
                balancer sends it to another server), start a new call there and only then leave this
                one (make-before-break). If the new connection is refused it stays on this call.

Error codes: ``bad_json``, ``bad_message``, ``unsupported_version``, ``unknown_type``,
``message_too_large``, ``rate_limited``, ``unexpected`` (out of order), ``bad_sdp``, ``bad_candidate``,
``too_many_candidates``, ``no_call``, ``voice_required``, ``voice_not_found``, ``voice_unusable``,
``bad_settings``, ``renegotiation_unsupported``, ``server_full``, ``server_draining``,
``server_not_ready``, ``timeout``, ``ice_failed``, ``media_error``, ``engine_error``, ``internal_error``.

``latency_ms`` estimates mouth-to-ear delay outside the browser: the round-trip time (one way in, one
way out), the server's jitter buffer (``webrtc_latency_ms``), one Opus frame, the stream's algorithmic
latency (block filling, engine look-ahead, resampling), median inference time and the backlog waiting
for the engine. The browser adds its own capture and playout buffers (the client shows them).
"""

from __future__ import annotations

import json
from typing import Any

from vcstream.engines.settings import SessionSettings, SettingsError
from vcstream.errors import VcstreamError

__all__ = [
    "CLIENT_MESSAGE_TYPES",
    "FRAME_LIMIT",
    "MAX_CANDIDATE_CHARS",
    "MAX_MESSAGE_BYTES",
    "MAX_REMOTE_CANDIDATES",
    "PROTOCOL_DESCRIPTION",
    "PROTOCOL_VERSION",
    "STATS_INTERVAL_S",
    "SignallingError",
    "parse_candidate",
    "parse_message",
    "settings_schema",
    "validate_settings",
]

_HEADING = "Protocol v1\n===========\n"
#: the protocol section of this docstring, served as /ws's description in the OpenAPI document
PROTOCOL_DESCRIPTION = (__doc__ or "").partition(_HEADING)[2].strip()

PROTOCOL_VERSION = 1
#: largest message accepted (an SDP offer is 3-6 KB); larger ones get an error and a close
MAX_MESSAGE_BYTES = 64 * 1024
#: aiohttp's own cap, above ours so that we can answer with an error before closing (and low enough
#: that aiohttp does not buffer megabytes of a frame it will refuse)
FRAME_LIMIT = 2 * MAX_MESSAGE_BYTES
STATS_INTERVAL_S = 1.0
MAX_REMOTE_CANDIDATES = 100
MAX_CANDIDATE_CHARS = 1024
#: the messages a client may send
CLIENT_MESSAGE_TYPES = frozenset({"hello", "offer", "ice", "voice", "settings", "bye"})


class SignallingError(VcstreamError):
    """A message that cannot be acted on; becomes an ``error`` reply (and a close when fatal)."""

    def __init__(
        self, code: str, message: str, *, fatal: bool = False, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.fatal = code, message, fatal
        #: when to try again (sent with the error): a full server's places free up as calls end
        self.retry_after_s = retry_after_s


# -- messages ---------------------------------------------------------------------------------------


def parse_message(text: str | None) -> tuple[str, dict[str, Any]]:
    """The type and fields of one text frame (None: a binary frame), or the ``SignallingError`` that
    answers it."""
    if text is None:
        raise SignallingError("bad_message", "binary frames are not part of the protocol")
    if len(text) > MAX_MESSAGE_BYTES:
        raise SignallingError(
            "message_too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes", fatal=True
        )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SignallingError("bad_json", f"the message is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SignallingError("bad_message", "a message is a JSON object")
    if data.get("v") != PROTOCOL_VERSION:
        raise SignallingError(
            "unsupported_version", f'this server speaks protocol v{PROTOCOL_VERSION} ("v": 1)'
        )
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_MESSAGE_TYPES:
        raise SignallingError("unknown_type", f"unknown message type {str(kind)[:40]!r}")
    return kind, data


def parse_candidate(data: dict[str, Any]) -> tuple[int, str] | None:
    """The ``(sdpMLineIndex, candidate)`` of an ``ice`` message (without an ``a=`` prefix); None for
    the end of the client's candidates."""
    candidate = data.get("candidate")
    if candidate is None:
        return None
    mline = data.get("sdpMLineIndex", 0)
    if (
        not isinstance(candidate, str)
        or len(candidate) > MAX_CANDIDATE_CHARS
        or not candidate.removeprefix("a=").startswith("candidate:")
    ):
        raise SignallingError("bad_candidate", "an ICE candidate is a 'candidate:...' string")
    if isinstance(mline, bool) or not isinstance(mline, int) or not 0 <= mline < 16:
        raise SignallingError("bad_candidate", "sdpMLineIndex must be a small integer")
    return mline, candidate.removeprefix("a=")


# -- settings ---------------------------------------------------------------------------------------


def settings_schema(defaults: SessionSettings) -> dict[str, dict[str, Any]]:
    """The per-session settings a client may change, with their ranges and defaults."""
    return defaults.schema(per_call_only=True)


def validate_settings(raw: object, current: SessionSettings) -> SessionSettings:
    """``current`` with the client's changes applied; every refusal is a ``bad_settings``."""
    if raw is None:
        return current
    if not isinstance(raw, dict):
        raise SignallingError("bad_settings", "settings must be an object")
    try:
        return current.updated(raw, per_call_only=True)
    except SettingsError as exc:
        raise SignallingError("bad_settings", str(exc)) from exc
