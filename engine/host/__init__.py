"""The serving host (`engine serve`, `engine up`): lifecycle, state polling, heartbeat, the
reconciler, runners, scale to zero and provisioned-throughput autoscaling."""
