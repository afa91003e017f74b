"""serving-engine: everything with state and time (state store, apply, serving host, CLI)."""
