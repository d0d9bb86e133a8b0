"""Flashpods: a self-hosted compute backend for AI coding agents."""

__version__ = "0.1.0"
