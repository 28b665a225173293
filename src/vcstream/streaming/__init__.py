"""The per-session streaming core: what a live session and a file conversion both run."""
