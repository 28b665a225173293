"""GStreamer media layer, the only package in vcstream that imports ``gi``.

``decode_file``/``encode_file`` turn audio files into float32 numpy arrays and back;
``vcstream.media.appio`` has the appsrc/appsink bridges live pipelines build on, and
``vcstream.media.gst`` the shared plumbing (init, element checks, running a pipeline to EOS).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vcstream.media.files import SUPPORTED_FORMATS, decode_file, encode_file

__all__ = ["SUPPORTED_FORMATS", "decode_file", "encode_file"]


def __getattr__(name: str) -> Any:
    # GStreamer loads on first use, so that the package's pure modules (the RTP timeline, codec
    # arithmetic) import without it
    if name in __all__:
        return getattr(importlib.import_module("vcstream.media.files"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
