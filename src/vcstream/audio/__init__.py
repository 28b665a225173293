"""Pure-numpy audio DSP shared by engines, the streaming core and the service."""
