"""Assembling the service: `build_server(config, runtime)` gives a ready HTTP server
(also used in-process by tests), with its background loops (cleanup, reconciliation).

Graceful stop (SIGTERM): stop accepting, close idle keep-alive connections, let requests
in flight finish, stop the loops. Running jobs are left alone: their containers keep
running and the next start-up reconciles them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from flashpods.api.artifacts import Artifacts
from flashpods.api.cleanup import Cleaner
from flashpods.api.config import Config
from flashpods.api.db import Store
from flashpods.api.http import RequestHandler
from flashpods.api.jobs import Jobs
from flashpods.api.logfollow import LogBus
from flashpods.api.ratelimit import RateLimiter
from flashpods.api.recovery import Reconciler
from flashpods.api.runtime import ContainerError, Runtime
from flashpods.api.uploads import Uploads

log = logging.getLogger("flashpods.api.server")
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux value; not exported on every build


@dataclass
class App:
    config: Config
    store: Store
    runtime: Runtime
    uploads: Uploads
    jobs: Jobs
    artifacts: Artifacts
    limiter: RateLimiter
    cleaner: Cleaner
    reconciler: Reconciler
    logbus: LogBus
    started: float = field(default_factory=time.monotonic)


def build_app(config: Config, runtime: Runtime) -> App:
    store = Store(config.db_path)
    uploads = Uploads(config, store)
    logbus = LogBus(config.max_log_followers)
    jobs = Jobs(config, store, uploads, runtime, logbus)
    return App(
        config=config,
        store=store,
        runtime=runtime,
        uploads=uploads,
        jobs=jobs,
        artifacts=Artifacts(config, store),
        limiter=RateLimiter(config.rate_limit_per_second, config.rate_limit_burst),
        cleaner=Cleaner(config, store, uploads),
        reconciler=Reconciler(store, jobs, runtime),
        logbus=logbus,
    )


class _Loop(threading.Thread):
    """Runs `work` every `interval` seconds until stopped; failures are logged, never fatal."""

    def __init__(self, name: str, interval: float, work: Any, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.work = work
        self.stop_event = stop

    def run(self) -> None:
        while True:
            try:
                self.work()
            except ContainerError as exc:  # podman down or slow: expected, keep it short
                log.warning(
                    "%s: podman: %s; retrying in %.0f s", self.name, exc.cause, self.interval
                )
            except Exception:
                log.exception("%s failed; retrying in %.0f s", self.name, self.interval)
            if self.stop_event.wait(self.interval):
                return


class FlashpodsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # we drain in-flight requests ourselves in stop()
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 drops SYNs under a burst of clients

    def __init__(self, app: App, address: tuple[str, int]) -> None:
        self.app = app
        self.closing = False
        self.connections: dict[RequestHandler, bool] = {}  # handler -> busy
        self.connections_lock = threading.Condition()
        self.stop_event = threading.Event()
        self.loops: list[_Loop] = []
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, RequestHandler, bind_and_activate=False)
        try:
            # Bind 10.0.0.1 even before wg0 is up (system.md: order it or use IP_FREEBIND).
            self.socket.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection failed outside a request's own error handling (client went away)."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("connection from %s: %s", client_address[0], error)
        else:
            log.exception("connection from %s failed", client_address[0])

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def mark(self, handler: RequestHandler, busy: bool) -> None:
        with self.connections_lock:
            self.connections[handler] = busy
            self.connections_lock.notify_all()

    def forget(self, handler: RequestHandler) -> None:
        with self.connections_lock:
            self.connections.pop(handler, None)
            self.connections_lock.notify_all()

    def start_background(self) -> None:
        """Reconcile with podman now (in the background, podman may be slow), then
        periodically; clean up periodically."""
        config = self.app.config
        self.loops = [
            _Loop(
                "reconcile",
                config.reconcile_interval,
                self.app.reconciler.run_once,
                self.stop_event,
            ),
            _Loop("cleanup", config.cleanup_interval, self.app.cleaner.run_once, self.stop_event),
        ]
        for loop in self.loops:
            loop.start()

    def stop(self, grace: float = 30.0) -> None:
        """Graceful stop; call from any thread except the one running serve_forever."""
        self.closing = True
        self.shutdown()  # serve_forever returns, no new connections are accepted
        self.socket.close()
        self.stop_event.set()
        self.app.logbus.close()  # log followers end their responses; clients resume later
        deadline = time.monotonic() + grace
        with self.connections_lock:
            for handler, busy in list(self.connections.items()):
                if not busy:  # idle keep-alive: wake its blocked read so the thread ends
                    with contextlib.suppress(OSError):
                        handler.connection.shutdown(socket.SHUT_RDWR)
            while any(self.connections.values()) and time.monotonic() < deadline:
                self.connections_lock.wait(0.1)
        for loop in self.loops:
            loop.join(timeout=max(0.0, deadline - time.monotonic()))
        self.app.store.close()


def build_server(config: Config, runtime: Runtime, background: bool = True) -> FlashpodsHTTPServer:
    """A bound server; run `serve_forever()` (in a thread for tests), then `stop()`."""
    app = build_app(config, runtime)
    server = FlashpodsHTTPServer(app, (config.listen_host, config.listen_port))
    if background:
        server.start_background()
    return server
