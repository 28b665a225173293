"""Transports: wire media endpoints (RTP today) to live engine sessions. Nothing here imports ``gi``;
GStreamer stays behind ``vcstream.media``."""
