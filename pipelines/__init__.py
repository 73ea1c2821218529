"""Pipelines: only wiring of components."""
