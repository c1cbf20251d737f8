"""The one exception protocol code raises for bad input."""


class ProtocolError(ValueError):
    """Raised for any malformed or unacceptable protocol input."""
