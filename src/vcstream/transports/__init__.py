"""Transports: wire media endpoints (an RTP relay, a WebRTC call) to live engine sessions, on one
base (``LiveTransport``). Nothing here imports ``gi``; GStreamer stays behind ``vcstream.media``."""
