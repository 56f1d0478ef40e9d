"""stalign.pairs (see docs/architecture.md)."""
