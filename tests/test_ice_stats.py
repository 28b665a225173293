"""Whether a call is relayed, read from webrtcbin's ``get-stats`` structures as GStreamer 1.22 writes
them (the transport names its selected pair; the pair names its two candidates by id; in 1.22 the
candidates' local/remote stats types are swapped, so only ids are trusted)."""

from __future__ import annotations

import pytest

from vcstream.media.gst import Gst, ensure_gst
from vcstream.media.webrtc import _IceStats


def _structure(text: str) -> object:
    ensure_gst()
    structure = Gst.Structure.from_string(text)[0]
    assert structure is not None, text
    return structure


def _ice(local_type: str, remote_type: str, *, selected: bool = True) -> _IceStats:
    ice = _IceStats()
    # as 1.22 reports a call: note the swapped stats types of the candidates
    candidate = "c, id=(string)ice-candidate-{}_1, candidate-type=(string){}"
    ice.add("remote-candidate", _structure(candidate.format("local", local_type)))
    ice.add("local-candidate", _structure(candidate.format("remote", remote_type)))
    ice.add("local-candidate", _structure("c, id=(string)unused, candidate-type=(string)relay"))
    ice.add(
        "candidate-pair",
        _structure(
            "p, id=(string)pair1, local-candidate-id=(string)ice-candidate-local_1, "
            "remote-candidate-id=(string)ice-candidate-remote_1"
        ),
    )
    if selected:
        ice.add("transport", _structure("t, id=(string)transport1, selected-candidate-pair-id=(string)pair1"))
    return ice


@pytest.mark.parametrize(
    ("local", "remote", "relayed"),
    [("host", "host", False), ("host", "relay", True), ("relay", "srflx", True), ("srflx", "prflx", False)],
)
def test_a_selected_pair_with_a_relay_end_is_relayed(local: str, remote: str, relayed: bool) -> None:
    assert _ice(local, remote).relayed() is relayed


def test_nothing_is_known_before_ice_selected_a_pair() -> None:
    assert _ice("relay", "relay", selected=False).relayed() is None
    assert _IceStats().relayed() is None
