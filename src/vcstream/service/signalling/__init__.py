"""WebSocket signalling at ``/ws`` and the WebRTC conversion sessions behind it.

* ``protocol``: the wire protocol (its description is served as /ws's in the OpenAPI document),
  message checks and the per-call settings;
* ``connection``: one WebSocket's state machine, handlers and timers;
* ``hello``: who a client is (its token) and the ``ready`` message;
* ``waiting_room``: the queue of connections waiting for a place on a full server (``hello`` with
  ``wait``), handed the places given back first come first served;
* ``stats``: the periodic ``stats`` message and the metrics it feeds;
* ``registry``: every connection of the application, the thread pool and asyncio bridge they
  share, admission and shutdown; ``setup`` registers it.

The call itself (a ``WebRtcPeer`` and its engine session) is ``vcstream.transports.webrtc_call``.
"""

from vcstream.service.signalling.protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    SignallingError,
    settings_schema,
    validate_settings,
)
from vcstream.service.signalling.registry import SessionRegistry, setup

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "SessionRegistry",
    "SignallingError",
    "settings_schema",
    "setup",
    "validate_settings",
]
