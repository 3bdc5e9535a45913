"""Seeing what the cluster does: progress bars, the task stream, statistical profiles
and performance reports."""
