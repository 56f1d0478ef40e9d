"""Plots (placeholder until implemented)."""

__all__: list[str] = []
