"""Internal: the web dashboard served by the scheduler, and the Prometheus metrics and health
endpoints of the scheduler and the workers."""
