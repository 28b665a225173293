"""Two ``WebRtcPeer``s in one process calling each other, for tests of the peer itself."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["PeerSide"]


class PeerSide:
    """One end of an in-process call: hands descriptions and candidates to the other end."""

    def __init__(self) -> None:
        self.other: Any = None
        self.candidates: list[str] = []
        self.states: dict[str, str] = {}
        self.errors: list[str] = []
        self.connected = threading.Event()

    def on_description(self, kind: str, sdp: str) -> None:
        if kind == "offer":
            self.other.answer(sdp)
        else:
            self.other.accept_answer(sdp)

    def on_ice_candidate(self, mline_index: int, candidate: str) -> None:
        self.candidates.append(candidate)
        self.other.add_ice_candidate(mline_index, candidate)

    def on_state(self, name: str, value: str) -> None:
        self.states[name] = value
        if name == "connection" and value == "connected":
            self.connected.set()

    def on_audio(self, samples: Any) -> None:
        pass

    def on_error(self, kind: str, message: str) -> None:
        self.errors.append(f"{kind}: {message}")
