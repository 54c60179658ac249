"""announcer: keeps anycast prefixes announced through ExaBGP while local services are healthy."""

__version__ = "0.1.0"
