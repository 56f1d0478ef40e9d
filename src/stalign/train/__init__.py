"""stalign.train (see docs/architecture.md)."""
