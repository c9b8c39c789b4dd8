"""The REST surface (docs/api.md)."""
