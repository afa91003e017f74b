"""Endpoint specs from files: the loader and the YAML source with line numbers."""
