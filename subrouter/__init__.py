"""
Subrouter: a local proxy that routes AI coding agents across several accounts.

This module holds the version only and imports nothing from Twisted, so the
dropin and packaging can read it cheaply.
"""

__version__ = "0.1.0"
