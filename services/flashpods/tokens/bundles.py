"""The trust domain's JWT bundle, streamed from the SPIRE agent (py-spiffe JwtSource).

The source keeps the last bundle while the agent restarts and reconnects by itself, so
exchanges go on during an agent restart. If it has no bundle yet (agent not up, or no
registration entry for the token service) or gave up, the next caller re-creates it, at
most once per `retry_interval`; meanwhile callers get 503 `spire_unavailable`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle
from spiffe.errors import PySpiffeError
from spiffe.spiffe_id.spiffe_id import TrustDomain
from spiffe.workloadapi.jwt_source import JwtSource

from flashpods.common.errors import ServiceError
from flashpods.common.polling import poll

log = logging.getLogger("flashpods.tokens.spire")


def spire_unavailable(reason: str) -> ServiceError:
    return ServiceError(503, "spire_unavailable", f"SPIRE agent unavailable: {reason}")


class BundleSource:
    def __init__(
        self,
        socket_path: Path,
        trust_domain: str,
        connect_timeout: float = 3.0,
        retry_interval: float = 1.0,
    ) -> None:
        self.socket_path = socket_path
        self.trust_domain = TrustDomain(trust_domain)
        self.connect_timeout = connect_timeout
        self.retry_interval = retry_interval
        self._lock = threading.Lock()
        self._source: JwtSource | None = None
        self._last_attempt = float("-inf")
        self._last_error = "not connected yet"

    def wait_for_socket(self, timeout: float) -> bool:
        """Bounded, logged wait for the agent's socket at start-up."""
        next_log = 0.0

        def present() -> bool:
            nonlocal next_log
            if self.socket_path.exists():
                return True
            if time.monotonic() >= next_log:
                log.info("waiting for the SPIRE agent socket %s", self.socket_path)
                next_log = time.monotonic() + 5
            return False

        if poll(present, timeout, interval=0.2):
            return True
        log.warning(
            "SPIRE socket %s still missing after %.0f s; serving 503 until it appears",
            self.socket_path,
            timeout,
        )
        return False

    def bundle(self) -> JwtBundle:
        with self._lock:
            source = self._usable_source_locked()
            try:
                bundle = source.get_bundle_for_trust_domain(self.trust_domain)
            except PySpiffeError as err:
                self._drop_locked(str(err))
                raise spire_unavailable(str(err)) from None
        if bundle is None:
            raise spire_unavailable(f"no JWT bundle for {self.trust_domain}")
        return bundle

    def _usable_source_locked(self) -> JwtSource:
        if self._source is not None and not self._source.is_closed():
            return self._source
        if self._source is not None:
            self._drop_locked("the Workload API stream failed")
        now = time.monotonic()
        if now - self._last_attempt < self.retry_interval:
            raise spire_unavailable(self._last_error)
        self._last_attempt = now
        if not self.socket_path.exists():
            self._last_error = f"no socket at {self.socket_path}"
            raise spire_unavailable(self._last_error)
        try:
            self._source = JwtSource(
                socket_path=f"unix://{self.socket_path}",
                timeout_in_seconds=self.connect_timeout,
            )
        except PySpiffeError as err:
            # Most often: the agent issues no identity to us (no registration entry).
            self._last_error = f"no JWT bundle from the Workload API ({err})"
            log.error("%s", self._last_error)
            raise spire_unavailable(self._last_error) from None
        log.info("streaming JWT bundles from %s", self.socket_path)
        return self._source

    def _drop_locked(self, reason: str) -> None:
        if self._source is not None:
            log.warning("JWT bundle source lost: %s", reason)
            self._source.close()
        self._source = None
        self._last_error = reason

    def close(self) -> None:
        with self._lock:
            if self._source is not None:
                self._source.close()
            self._source = None
