"""The demo: a catalog of five shipped excerpts, a broadcast built from real music, and the monitor run on it."""
