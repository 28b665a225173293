"""GStreamer media layer, the only package in vcstream that imports ``gi``.

``decode_file``/``encode_file`` turn audio files into float32 numpy arrays and back;
``vcstream.media.appio`` has the appsrc/appsink bridges live pipelines build on, and
``vcstream.media.gst`` the shared plumbing (init, element checks, running a pipeline to EOS).
"""

from typing import TYPE_CHECKING

from vcstream.lazy import lazy_exports

if TYPE_CHECKING:
    from vcstream.media.files import SUPPORTED_FORMATS, decode_file, encode_file

__all__ = ["SUPPORTED_FORMATS", "decode_file", "encode_file"]

# GStreamer loads on first use, so that the package's pure modules (the RTP timeline, codec
# arithmetic) import without it
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "vcstream.media.files"))
