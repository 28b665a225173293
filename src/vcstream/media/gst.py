"""GStreamer plumbing shared by the media layer: one-time initialisation, element checks, building
elements, and running a pipeline to EOS on its own bus (no GLib main loop needed for file work).

This package is the only place in vcstream that imports ``gi``; everything above it sees numpy arrays,
paths and vcstream errors.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstAudio", "1.0")
from gi.repository import GLib, Gst, GstApp, GstAudio  # noqa: E402

from vcstream.errors import InvalidAudioError, MediaError  # noqa: E402

__all__ = [
    "GLib",
    "Gst",
    "GstApp",
    "GstAudio",
    "ensure_gst",
    "error_from_message",
    "link_many",
    "make_element",
    "poll_bus",
    "require_elements",
    "run_to_eos",
    "seconds_to_ns",
    "start",
]

log = logging.getLogger(__name__)

_init_lock = threading.Lock()
_initialised = False

#: Debian package -> elements it ships, to make "missing element" errors actionable
_PACKAGE_ELEMENTS: dict[str, tuple[str, ...]] = {
    "gstreamer1.0-plugins-base": (
        "appsrc", "appsink", "audioconvert", "audioresample", "audiotestsrc", "decodebin",
        "uridecodebin", "opusenc", "opusdec", "oggmux", "oggdemux", "vorbisenc", "vorbisdec",
    ),
    "gstreamer1.0-plugins-good": (
        "wavenc", "wavparse", "flacenc", "flacdec", "lamemp3enc", "mpg123audiodec", "xingmux",
        "id3v2mux", "webmmux", "matroskamux", "matroskademux", "rtpopuspay", "rtpopusdepay",
        "rtpjitterbuffer", "udpsrc", "udpsink",
    ),
    "gstreamer1.0-plugins-bad": ("webrtcbin", "netsim"),
    "gstreamer1.0-libav": ("avdec_mp3", "avdec_aac"),
    "gstreamer1.0-nice": ("nicesrc", "nicesink"),
    "libgstreamer1.0-0": ("filesrc", "filesink", "fakesink", "capsfilter", "queue", "tee"),
}  # fmt: skip
_PACKAGES = {element: package for package, names in _PACKAGE_ELEMENTS.items() for element in names}


def ensure_gst() -> None:
    """Initialise GStreamer once per process (thread-safe; later calls return at once)."""
    global _initialised  # noqa: PLW0603 - process-wide one-time init flag
    if _initialised:
        return
    with _init_lock:
        if _initialised:
            return
        try:
            Gst.init(None)
        except GLib.Error as exc:
            raise MediaError(f"GStreamer could not be initialised: {exc.message}") from exc
        _initialised = True
        log.debug("initialised %s", Gst.version_string())


def require_elements(*names: str) -> None:
    """Raise MediaError naming every element in ``names`` that no installed plugin provides, with
    the Debian packages that ship them."""
    ensure_gst()
    missing = [name for name in names if Gst.ElementFactory.find(name) is None]
    if not missing:
        return
    packages = sorted({_PACKAGES[name] for name in missing if name in _PACKAGES})
    hint = f"; install {', '.join(packages)}" if packages else ""
    raise MediaError(f"GStreamer element(s) not available: {', '.join(missing)}{hint}")


def make_element(factory: str, name: str | None = None, **props: Any) -> Any:
    """Create an element and set its properties (``foo_bar=`` sets ``foo-bar``, ``async_=`` sets
    ``async``)."""
    ensure_gst()
    element = Gst.ElementFactory.make(factory, name)
    if element is None:
        require_elements(factory)
        raise MediaError(f"could not create GStreamer element {factory!r}")
    for key, value in props.items():
        element.set_property(key.rstrip("_").replace("_", "-"), value)
    return element


def link_many(*elements: Any) -> None:
    """Link elements in a chain, naming the pair that failed (usually a caps mismatch)."""
    for upstream, downstream in itertools.pairwise(elements):
        if not upstream.link(downstream):
            raise MediaError(f"could not link {upstream.get_name()} to {downstream.get_name()}")


def seconds_to_ns(seconds: float) -> int:
    return max(0, int(seconds * Gst.SECOND))


def error_from_message(message: Any, *, bad_input: str | None = None) -> MediaError | InvalidAudioError:
    """Turn an ERROR message into a vcstream exception carrying GStreamer's debug text.

    ``bad_input`` names the input (e.g. a file) when stream/typefind/missing-decoder errors mean the
    input is at fault (decoding) rather than the pipeline (encoding): those become InvalidAudioError.
    """
    err, debug = message.parse_error()
    source = message.src.get_path_string() if message.src is not None else "pipeline"
    detail = f"{err.message} [{source}]"
    if debug:
        # debug text holds the element path and the reason (e.g. "Missing decoder: PNG (image/png)")
        detail += f": {debug.strip()}"
    if bad_input is not None:
        if err.matches(Gst.ResourceError.quark(), Gst.ResourceError.NOT_FOUND):
            return InvalidAudioError(f"{bad_input} not found ({detail})")
        # stream errors (typefind, demux, decode) and "no decoder for this stream" blame the input
        if (
            err.domain == GLib.quark_to_string(Gst.StreamError.quark())
            or err.matches(Gst.CoreError.quark(), Gst.CoreError.MISSING_PLUGIN)
            or err.matches(Gst.ResourceError.quark(), Gst.ResourceError.READ)
        ):
            return InvalidAudioError(f"{bad_input} could not be decoded as audio: {detail}")
    return MediaError(f"GStreamer pipeline failed: {detail}")


def poll_bus(bus: Any, timeout_s: float, *, bad_input: str | None = None) -> bool:
    """Wait up to ``timeout_s`` for ERROR or EOS on ``bus`` (0 = just look). Returns True on EOS,
    False on timeout; raises on ERROR. Warnings are logged and skipped."""
    deadline = time.monotonic() + timeout_s
    types = Gst.MessageType.ERROR | Gst.MessageType.EOS | Gst.MessageType.WARNING
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        message = bus.timed_pop_filtered(seconds_to_ns(remaining), types)
        if message is None:
            return False
        if message.type == Gst.MessageType.EOS:
            return True
        if message.type == Gst.MessageType.ERROR:
            raise error_from_message(message, bad_input=bad_input)
        warning, debug = message.parse_warning()
        log.warning("GStreamer warning: %s (%s)", warning.message, debug)


def start(pipeline: Any, *, bad_input: str | None = None) -> None:
    """Set ``pipeline`` to PLAYING, raising the bus's error if the state change fails at once."""
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        # the element that failed posted the reason on the bus before returning FAILURE
        poll_bus(pipeline.get_bus(), 0, bad_input=bad_input)
        raise MediaError(f"GStreamer pipeline {pipeline.get_name()} could not start")


def run_to_eos(pipeline: Any, timeout_s: float, *, bad_input: str | None = None) -> None:
    """Play ``pipeline`` until EOS, raising on ERROR or after ``timeout_s``; always leaves it in NULL."""
    ensure_gst()
    try:
        start(pipeline, bad_input=bad_input)
        if not poll_bus(pipeline.get_bus(), timeout_s, bad_input=bad_input):
            raise MediaError(
                f"GStreamer pipeline {pipeline.get_name()} stalled: no EOS after {timeout_s:g} s"
            )
    finally:
        pipeline.set_state(Gst.State.NULL)
