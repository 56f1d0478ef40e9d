"""stalign.tl (see docs/architecture.md)."""
