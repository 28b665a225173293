"""GStreamer media layer, the only package in vcstream that imports ``gi``.

``decode_file``/``encode_file`` turn audio files into float32 numpy arrays and back;
``vcstream.media.appio`` has the appsrc/appsink bridges live pipelines build on, and
``vcstream.media.gst`` the shared plumbing (init, element checks, running a pipeline to EOS).
"""

from vcstream.media.files import SUPPORTED_FORMATS, decode_file, encode_file

__all__ = ["SUPPORTED_FORMATS", "decode_file", "encode_file"]
