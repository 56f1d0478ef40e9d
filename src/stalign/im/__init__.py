"""stalign.im (see docs/architecture.md)."""
