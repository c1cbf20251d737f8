"""weft-control, the coordination server: see docs/control-protocol.md and service.py."""
