"""The secrets file, re-read whenever it changes (checked on every exchange) or on SIGHUP."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from flashpods.tokens.policy import Secrets, SecretsError, parse_secrets

log = logging.getLogger("flashpods.tokens.secrets")

_Stamp = tuple[int, int, int, int]


def _stamp(path: Path) -> _Stamp:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def load_secrets(path: Path) -> Secrets:
    try:
        text = path.read_text()
    except OSError as err:
        raise SecretsError(f"cannot read it ({err.strerror})") from None
    return parse_secrets(text)


class SecretsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: _Stamp | None = None
        self._secrets: Secrets | None = None
        self._error: str | None = None

    def load(self) -> Secrets:
        """Initial load; raises SecretsError so the service can refuse to start."""
        with self._lock:
            stamp = _stamp_or_none(self.path)
            secrets = load_secrets(self.path)
            self._stamp, self._secrets, self._error = stamp, secrets, None
            return secrets

    def current(self) -> Secrets:
        """The secrets as the file says now; SecretsError while it is unusable."""
        with self._lock:
            stamp = _stamp_or_none(self.path)
            if stamp != self._stamp or stamp is None:
                self._reload_locked(stamp)
            if self._secrets is None:
                raise SecretsError(self._error or "not loaded")
            return self._secrets

    def force_reload(self) -> None:
        with self._lock:
            self._reload_locked(_stamp_or_none(self.path))

    def _reload_locked(self, stamp: _Stamp | None) -> None:
        try:
            secrets = load_secrets(self.path)
        except SecretsError as err:
            # Serving stale secrets after an operator changed the file would hide the
            # change: fail loudly (500 secrets_unavailable) until the file is fixed.
            if self._error != str(err):
                log.error("secrets file %s unusable: %s", self.path, err)
            self._stamp, self._secrets, self._error = stamp, None, str(err)
            return
        if self._secrets is not None and self._stamp is not None:
            log.info("secrets file %s changed: reloaded", self.path)
        elif self._error is not None:
            log.info("secrets file %s usable again: reloaded", self.path)
        self._stamp, self._secrets, self._error = stamp, secrets, None


def _stamp_or_none(path: Path) -> _Stamp | None:
    try:
        return _stamp(path)
    except OSError:
        return None
