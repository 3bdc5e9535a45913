"""Internal: seeing what the cluster does: progress bars, the task stream, statistical profiles
and performance reports."""
