"""Batch super-resolution for large image archives."""

__version__ = "0.1.0"
