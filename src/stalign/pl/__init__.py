"""stalign.pl (see docs/architecture.md)."""
