"""stalign.models (see docs/architecture.md)."""
