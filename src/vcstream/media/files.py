"""Audio files <-> numpy through GStreamer: ``decode_file`` reads anything GStreamer can decode
(wav, flac, mp3, ogg/vorbis, ogg/opus, webm/opus as browsers record it, the audio track of videos),
``encode_file`` writes wav, flac, ogg/opus and mp3.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from vcstream.audio.types import Audio
from vcstream.errors import ConfigurationError, InvalidAudioError, MediaError
from vcstream.media.appio import AudioSink, AudioSource
from vcstream.media.gst import (
    Gst,
    ensure_gst,
    link_many,
    make_element,
    poll_bus,
    require_elements,
    run_to_eos,
    start,
)

#: formats ``encode_file`` writes (also the file extensions it recognises); ``decode_file`` reads these
#: and whatever else the installed GStreamer plugins decode
SUPPORTED_FORMATS: tuple[str, ...] = ("wav", "flac", "ogg", "opus", "mp3")

#: format -> (caps the encoder is fed, encoder chain after them); all 16-bit, Opus only takes 48 kHz
#: (of its native 48/24/16/12/8 kHz rates, 48 kHz keeps everything the input has)
_ENCODERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wav": ("audio/x-raw,format=S16LE", ("wavenc",)),
    "flac": ("audio/x-raw,format=S16LE", ("flacenc",)),
    "ogg": ("audio/x-raw,rate=48000", ("opusenc", "oggmux")),
    "opus": ("audio/x-raw,rate=48000", ("opusenc", "oggmux")),
    # xingmux writes the Xing/LAME header: seekable VBR and encoder delay/padding for gapless decoding
    "mp3": ("audio/x-raw,format=S16LE", ("lamemp3enc", "xingmux")),
}

#: no decoded audio for this long means the pipeline is stuck (decoding runs far faster than real time)
DEFAULT_STALL_TIMEOUT_S = 30.0
_PULL_TIMEOUT_S = 0.1
_PUSH_FRAMES = 8192


def _video_and_text_decoders(_bin: Any, _pad: Any, _caps: Any, factory: Any) -> int:
    """decodebin ``autoplug-select``: don't spend time decoding video, images or subtitles."""
    klass = factory.get_metadata("klass") or ""
    if "Decoder" in klass and any(kind in klass for kind in ("Video", "Image", "Subtitle")):
        return 2  # GST_AUTOPLUG_SELECT_SKIP
    return 0  # GST_AUTOPLUG_SELECT_TRY


def decode_file(
    path: str | os.PathLike[str],
    sample_rate: int,
    channels: int = 1,
    *,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> Audio:
    """Decode the first audio stream of ``path`` to float32 at ``sample_rate`` with ``channels``
    channels (mixed down or up as needed). Returns shape (n,) for mono, (n, channels) otherwise.

    Raises InvalidAudioError for a missing file, one that is not audio, one that holds no audio, or
    NaN/Inf samples; MediaError when the pipeline fails or decodes nothing for ``stall_timeout_s``.
    """
    ensure_gst()
    file = Path(path)
    what = f"audio file {str(file)!r}"
    if not file.exists():
        raise InvalidAudioError(f"{what} not found")
    if not file.is_file():
        raise InvalidAudioError(f"{what} is not a regular file")
    if file.stat().st_size == 0:
        raise InvalidAudioError(f"{what} holds no audio (the file is empty)")
    require_elements("filesrc", "decodebin", "audioconvert", "audioresample", "appsink")

    pipeline = Gst.Pipeline.new("decode")
    src = make_element("filesrc", location=str(file.resolve()))
    decoder = make_element("decodebin", caps=Gst.Caps.from_string("audio/x-raw"), expose_all_streams=False)
    convert = make_element("audioconvert")
    resample = make_element("audioresample")
    # bounded queue: the decoder waits for us instead of decoding the whole file into memory
    sink = AudioSink(sample_rate, channels, max_buffers=64)
    for element in (src, decoder, convert, resample, sink.element):
        pipeline.add(element)
    link_many(src, decoder)
    link_many(convert, resample, sink.element)

    link_failures: list[str] = []
    pads_lock = threading.Lock()  # streams of one file may appear on different streaming threads

    def on_pad_added(_decoder: Any, pad: Any) -> None:
        with pads_lock:
            add_pad(pad)

    def add_pad(pad: Any) -> None:
        target = convert.get_static_pad("sink")
        if not target.is_linked():
            result = pad.link(target)
            if result != Gst.PadLinkReturn.OK:
                caps = pad.get_current_caps()
                link_failures.append(
                    f"{result.value_nick} for {caps.to_string() if caps else 'unknown caps'}"
                )
            return
        # a second audio track: drain it so its demuxer branch does not stall or fail not-linked
        drain = make_element("fakesink", sync=False, async_=False)
        pipeline.add(drain)
        drain.sync_state_with_parent()
        pad.link(drain.get_static_pad("sink"))

    handlers = [
        decoder.connect("pad-added", on_pad_added),
        decoder.connect("autoplug-select", _video_and_text_decoders),
    ]

    blocks: list[Audio] = []
    bus = pipeline.get_bus()
    try:
        start(pipeline, bad_input=what)
        last_progress = time.monotonic()
        while True:
            block = sink.pull(_PULL_TIMEOUT_S)
            if block is not None:
                blocks.append(block)
                last_progress = time.monotonic()
            elif sink.is_eos:
                break
            elif time.monotonic() - last_progress > stall_timeout_s:
                poll_bus(bus, 0, bad_input=what)
                raise MediaError(f"decoding {what} stalled: no audio for {stall_timeout_s:g} s")
            if link_failures:  # the pipeline fails not-linked soon; the link result says why
                raise MediaError(f"decoded audio of {what} cannot be converted: {link_failures[0]}")
            # errors stop the flow without EOS at the appsink: they only show on the bus
            poll_bus(bus, 0, bad_input=what)
    finally:
        pipeline.set_state(Gst.State.NULL)
        # the pad-added closure references the pipeline: break the cycle GObject's GC cannot see
        for handler in handlers:
            decoder.disconnect(handler)

    shape = (0,) if channels == 1 else (0, channels)
    audio = np.concatenate(blocks) if blocks else np.zeros(shape, dtype=np.float32)
    if audio.shape[0] == 0:
        raise InvalidAudioError(f"{what} holds no audio (0 samples decoded)")
    if not np.all(np.isfinite(audio)):
        raise InvalidAudioError(f"{what} holds NaN or infinite samples")
    return audio


def _encoder_settings(factory: str, channels: int) -> dict[str, Any]:
    if factory == "opusenc":
        # Opus's default 64 kb/s is for the whole stream: stereo with two different signals on the
        # channels loses too much at that rate, so give each channel 64 kb/s
        return {"bitrate": 64000 * channels}
    return {}


def _format_of(file: Path, fmt: str | None) -> str:
    name = (fmt if fmt is not None else file.suffix).lower().lstrip(".")
    if name not in _ENCODERS:
        given = f"format {fmt!r}" if fmt is not None else f"extension {file.suffix!r} of {file}"
        raise ConfigurationError(
            f"cannot encode audio with {given}: supported formats are {', '.join(SUPPORTED_FORMATS)}"
        )
    return name


def _checked_samples(samples: Audio) -> tuple[Audio, int]:
    data = np.asarray(samples)
    if data.ndim not in (1, 2) or (data.ndim == 2 and data.shape[1] not in (1, 2)):
        raise ConfigurationError(f"encode_file takes mono (n,) or (n, 1|2) audio, got shape {data.shape}")
    if data.shape[0] == 0:
        raise InvalidAudioError("no audio to encode (0 samples)")
    if not np.all(np.isfinite(data)):
        raise InvalidAudioError("audio to encode contains NaN or infinite samples")
    channels = 1 if data.ndim == 1 else data.shape[1]
    if data.ndim == 2 and channels == 1:
        data = data[:, 0]
    return np.ascontiguousarray(data, dtype=np.float32), channels


def encode_file(
    path: str | os.PathLike[str],
    samples: Audio,
    sample_rate: int,
    fmt: str | None = None,
) -> Path:
    """Encode ``samples`` ((n,) mono or (n, 2) stereo float32 in [-1, 1]) at ``sample_rate`` to
    ``path``, in ``fmt`` or the format its extension names (see SUPPORTED_FORMATS). wav and flac are
    16-bit PCM, ogg/opus is Opus at 48 kHz (64 kb/s per channel) in Ogg, mp3 is LAME VBR.

    The file appears complete or not at all: encoding goes to a hidden temporary file beside it that
    replaces ``path`` on success and is removed on failure. Returns ``path`` as a Path.
    """
    ensure_gst()
    file = Path(path)
    name = _format_of(file, fmt)
    data, channels = _checked_samples(samples)
    if sample_rate <= 0:
        raise ConfigurationError(f"sample rate must be positive, got {sample_rate}")
    feed_caps, chain = _ENCODERS[name]
    require_elements("appsrc", "audioconvert", "audioresample", "capsfilter", *chain, "filesink")

    # a unique name instead of mkstemp: filesink creates it with the usual permissions (not 0600)
    temp = file.with_name(f".{file.name}.{uuid.uuid4().hex[:12]}.part")
    pipeline = Gst.Pipeline.new(f"encode-{name}")
    source = AudioSource(sample_rate, channels, live=False)
    elements = [
        source.element,
        # plain rounding to 16 bits: dither noise would make a lossless round trip inexact
        make_element("audioconvert", dithering=0),
        make_element("audioresample"),
        make_element("capsfilter", caps=Gst.Caps.from_string(feed_caps)),
        *(make_element(factory, **_encoder_settings(factory, channels)) for factory in chain),
        make_element("filesink", location=str(temp)),
    ]
    for element in elements:
        pipeline.add(element)
    link_many(*elements)

    try:
        # pushed up front (unbounded queue): no push can block on a pipeline that failed
        for offset in range(0, data.shape[0], _PUSH_FRAMES):
            if not source.push(data[offset : offset + _PUSH_FRAMES]):
                raise MediaError(f"appsrc refused audio while encoding {file}")
        source.end_of_stream()
        run_to_eos(pipeline, timeout_s=60.0 + data.shape[0] / sample_rate)
        os.replace(temp, file)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return file
