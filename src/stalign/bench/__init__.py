"""stalign.bench (see docs/architecture.md)."""
