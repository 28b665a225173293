"""Pure-numpy audio DSP shared by engines, the streaming core and the service, and the ``Audio`` type
they all use."""

from vcstream.audio.types import Audio

__all__ = ["Audio"]
