"""The data plane: routing table, dispatch, rate limits, metrics, usage."""
