"""Prometheus metrics and the request id: framework-free, importable from every layer.

Everything here is plain Python and prometheus-client, so that audit's core,
keys and the shell can all count into the same families without importing
each other (pyproject.toml's import-linter contracts keep it so).
"""
