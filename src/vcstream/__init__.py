"""vcstream: real-time zero-shot voice conversion as a service.

Layers (each folder is one):
  audio/      pure-numpy DSP shared by everything (streaming resampler, reference validation, SOLA)
  engines/    voice conversion engines behind one interface (seedvc, world, passthrough); no I/O
  streaming/  the per-session streaming core: I/O-rate framing and resampling around an engine session
  media/      GStreamer (the only package that imports gi): file decode/encode, appsrc/appsink
  bench/      benchmarks that print numbers
"""

__version__ = "0.1.0"
