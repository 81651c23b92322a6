"""PutPlace: track files across a fleet, store each distinct content once."""

__version__ = "0.1.0"
