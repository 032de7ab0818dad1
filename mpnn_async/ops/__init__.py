"""Running the daemons: health checks, Prometheus metrics, log formats."""
