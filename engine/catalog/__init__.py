"""The model catalog: local registrations, an MLflow Model Registry, throughput calibration."""
