"""Internal: small helpers (event loops, processes, garbage-collector pauses)."""
