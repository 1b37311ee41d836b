"""Correspond: open-source, self-hostable two-way email sync for CRMs."""

__all__ = ["__version__"]

__version__ = "0.1.0"
