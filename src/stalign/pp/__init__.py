"""stalign.pp (see docs/architecture.md)."""
