"""Service logging: one line per event on stderr (journald adds the time)."""

from __future__ import annotations

import logging
import os

_LEVELS = {
    "trace": "DEBUG",
    "debug": "DEBUG",
    "info": "INFO",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
}


def configure_logging(service: str) -> logging.Logger:
    """FLASHPODS_LOG_LEVEL wins; RUST_LOG is the seed's name and the fallback."""
    raw = os.environ.get("FLASHPODS_LOG_LEVEL") or os.environ.get("RUST_LOG") or "info"
    level = _LEVELS.get(raw.strip().lower(), "INFO")
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    return logging.getLogger(service)
