"""`flashpods-api`: configuration from the environment, the podman runtime, the server.

SIGTERM/SIGINT: stop accepting, finish requests in flight, exit 0. Running jobs are
left alone (their containers keep running; the next start-up reconciles them).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

from flashpods.api.config import ConfigError, load_config
from flashpods.api.server import build_server
from flashpods.common.logsetup import configure_logging

# What the API creates (database and its WAL/SHM, snapshots, artifacts, logs) is for its
# own user alone, whatever umask it was started with (issue #11 W3/W4).
UMASK = 0o077


def main() -> int:
    os.umask(UMASK)
    log = configure_logging("flashpods-api")
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"flashpods-api: configuration error: {exc}", file=sys.stderr)
        return 2
    # Imported here: the podman adapter is only needed by the real service.
    from flashpods.api.runtime.podman import PodmanRuntime

    try:
        runtime = PodmanRuntime(config)
    except ValueError as exc:  # the runtime's own checks (mount paths, log limit)
        print(f"flashpods-api: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        server = build_server(config, runtime)
    except OSError as exc:
        address = f"{config.listen_host}:{config.listen_port}"
        print(f"flashpods-api: cannot listen on {address}: {exc.strerror}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping (requests in flight finish; jobs keep running)", signum)
        # stop() waits for serve_forever to return, so it cannot run on this thread.
        threading.Thread(target=server.stop, name="stop").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("listening on %s (instance %s)", server.url, config.instance)
    server.serve_forever()
    for thread in threading.enumerate():
        if thread.name == "stop":
            thread.join()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
