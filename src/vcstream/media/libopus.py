"""libopus's decoder through ctypes: decode a packet, rebuild the frame before it from its in-band FEC,
or make up audio where nothing came (packet loss concealment).

Why not GStreamer's ``opusdec``: with ``use-inband-fec`` it decodes each packet only when the next one
(or a loss event) arrives, keeping a frame back on every call for the FEC the next packet may carry
(20 ms per decoder, lossy or not; see ``vcstream.media.opus_receiver``). libopus itself leaves that
choice to its caller. libopus is what ``opusdec`` runs (``libopus0``, a dependency of GStreamer's
Opus plugin); no Python binding of it is kept up, and the four calls needed here are a small surface.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

import numpy as np

from vcstream.audio.types import Audio
from vcstream.errors import MediaError

__all__ = ["OPUS_DECODING_RATES", "OpusDecoder"]

#: the rates libopus decodes at
OPUS_DECODING_RATES = (8000, 12000, 16000, 24000, 48000)
#: the longest Opus packet: 120 ms
_MAX_PACKET_S = 0.12


@functools.cache
def _library() -> Any:
    name = ctypes.util.find_library("opus")
    if name is None:
        raise MediaError("libopus is not installed (apt-get install libopus0)")
    lib = ctypes.CDLL(name)
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decode_float.restype = ctypes.c_int
    lib.opus_decode_float.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_float),
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.opus_packet_get_nb_samples.restype = ctypes.c_int
    lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    return lib


def _error(code: int) -> str:
    return str(_library().opus_strerror(code).decode())


class OpusDecoder:
    """One mono libopus decoder at ``rate`` (one of ``OPUS_DECODING_RATES``). Not thread-safe: one
    stream, one thread."""

    def __init__(self, rate: int) -> None:
        self._handle: int | None = None
        if rate not in OPUS_DECODING_RATES:
            raise ValueError(f"libopus decodes at {OPUS_DECODING_RATES} Hz, not {rate}")
        self.rate = rate
        lib = _library()
        error = ctypes.c_int(0)
        handle = lib.opus_decoder_create(rate, 1, ctypes.byref(error))
        if not handle or error.value != 0:
            raise MediaError(f"libopus could not make a decoder: {_error(error.value)}")
        self._handle = handle
        self._out = np.zeros(round(_MAX_PACKET_S * rate), np.float32)
        self._out_pointer = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def samples_in(self, packet: bytes) -> int:
        """The audio ``packet`` holds, in samples at this rate (0 for a malformed packet)."""
        count = _library().opus_packet_get_nb_samples(packet, len(packet), self.rate)
        return max(0, int(count))

    def decode(self, packet: bytes) -> Audio | None:
        """The packet's audio; None when libopus refuses the packet (malformed)."""
        return self._decode(packet, self._out.shape[0], fec=False)

    def decode_fec(self, packet: bytes, samples: int) -> Audio | None:
        """The frame before ``packet`` (``samples`` long), from the FEC the packet carries, or made up
        where it carries none; None when libopus refuses the packet."""
        return self._decode(packet, samples, fec=True)

    def conceal(self, samples: int) -> Audio:
        """``samples`` of audio made up to follow what was decoded last (a multiple of 2.5 ms), in
        steps of at most 120 ms, the most libopus makes at once."""
        pieces, left = [], samples
        while left > 0:
            step = min(left, self._out.shape[0])
            made = self._decode(None, step, fec=False)
            pieces.append(made if made is not None and made.shape[0] else np.zeros(step, np.float32))
            left -= pieces[-1].shape[0]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    def _decode(self, packet: bytes | None, samples: int, fec: bool) -> Audio | None:
        if self._handle is None:
            raise MediaError("the Opus decoder is closed")
        samples = min(samples, self._out.shape[0])
        data, size = (None, 0) if packet is None else (packet, len(packet))
        count = _library().opus_decode_float(self._handle, data, size, self._out_pointer, samples, int(fec))
        if count < 0:
            return None
        return self._out[:count].copy()

    def close(self) -> None:
        if self._handle is not None:
            _library().opus_decoder_destroy(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()
