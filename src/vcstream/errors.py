"""Domain exceptions. Messages name what was wrong and what to do; callers map them to exit codes or
HTTP statuses at the edge."""


class VcstreamError(Exception):
    """Base of every error vcstream raises on purpose."""


class InvalidAudioError(VcstreamError):
    """Input audio that cannot be used: undecodable, empty, silent, too short, NaN/Inf samples."""


class MediaError(VcstreamError):
    """A GStreamer pipeline failed (missing element, negotiation or stream error)."""


class ModelUnavailableError(VcstreamError):
    """Model weights are missing and cannot be fetched (hub unreachable, no local files)."""


class ConfigurationError(VcstreamError):
    """Settings that do not fit together (e.g. a block size that is not a multiple of 20 ms)."""
