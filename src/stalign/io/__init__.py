"""stalign.io (see docs/architecture.md)."""
