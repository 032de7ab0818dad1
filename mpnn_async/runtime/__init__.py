"""The distributed runtime: job specs, the control protocol, partition workers and the scheduler."""
