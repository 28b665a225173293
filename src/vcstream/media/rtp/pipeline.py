"""The live pipeline both RTP ends are built on: its bus is watched on the shared GLib loop, errors
are counted and the pipeline restarted (within limits), EOS is signalled."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from vcstream.errors import MediaError
from vcstream.media.gst import Gst, ensure_gst
from vcstream.media.mainloop import GLibLoop

log = logging.getLogger(__name__)

#: a pipeline that fails this often within a minute is left stopped instead of restarted
_MAX_RESTARTS_PER_MINUTE = 10


class _LivePipeline:
    """A pipeline whose bus is watched on the shared GLib loop. Errors are counted and the pipeline
    is restarted (``_on_restart`` first); EOS sets ``eos``."""

    def __init__(self, name: str) -> None:
        ensure_gst()
        self.name = name
        self.loop = GLibLoop.shared()
        self.pipeline: Any = Gst.Pipeline.new(name)
        self.eos = threading.Event()
        self.errors = 0
        self.restarts = 0
        self.last_error: str | None = None
        self._restart_times: collections.deque[float] = collections.deque(maxlen=_MAX_RESTARTS_PER_MINUTE)
        self._running = False
        self._bus_handler: int | None = None

    def _start_pipeline(self) -> None:
        def begin() -> None:
            bus = self.pipeline.get_bus()
            bus.add_signal_watch()
            self._bus_handler = bus.connect("message", self._on_message)
            self._running = True
            if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
                self._stop_pipeline_now()
                raise MediaError(f"{self.name}: pipeline could not start ({self.last_error or 'see log'})")

        self.loop.call(begin)

    def _stop_pipeline(self) -> None:
        self.loop.call(self._stop_pipeline_now)

    def _stop_pipeline_now(self) -> None:
        self._running = False
        self.pipeline.set_state(Gst.State.NULL)
        bus = self.pipeline.get_bus()
        if self._bus_handler is not None:
            bus.disconnect(self._bus_handler)
            bus.remove_signal_watch()
            self._bus_handler = None

    def _on_message(self, _bus: Any, message: Any) -> None:
        if message.type == Gst.MessageType.EOS:
            self.eos.set()
        elif message.type == Gst.MessageType.WARNING:
            warning, debug = message.parse_warning()
            log.warning("%s: %s (%s)", self.name, warning.message, debug)
        elif message.type == Gst.MessageType.ERROR:
            err, debug = message.parse_error()
            source = message.src.get_name() if message.src is not None else "?"
            self.errors += 1
            self.last_error = f"{err.message} [{source}]"
            log.error("%s: %s: %s", self.name, self.last_error, debug)
            if self._running:
                self._restart()

    def _restart(self) -> None:
        now = time.monotonic()
        if len(self._restart_times) == self._restart_times.maxlen and now - self._restart_times[0] < 60:
            log.error("%s: failing repeatedly; left stopped", self.name)
            self._stop_pipeline_now()
            return
        self._restart_times.append(now)
        self.restarts += 1
        self.pipeline.set_state(Gst.State.NULL)
        self._on_restart()
        self.pipeline.set_state(Gst.State.PLAYING)

    def _on_restart(self) -> None:
        """Hook: undo dynamic pipeline changes while the pipeline is stopped."""

    @property
    def running(self) -> bool:
        return self._running


def _link_pads(src: Any, sink: Any) -> None:
    result = src.link(sink)
    if result != Gst.PadLinkReturn.OK:
        raise MediaError(f"could not link {src.get_name()} to {sink.get_name()}: {result.value_nick}")
