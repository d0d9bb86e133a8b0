"""Overhead of `flashpods run -- true` over the same work done with raw HTTP calls.

Both sides do one real job end to end against the same API: rsync a small folder,
finalize it, create a worker running `true`, poll until it has ended. The CLI side is the
`flashpods` console script as a user runs it (interpreter start-up, config, upload,
create, following the log, the artifact listing, exit code); the raw side is rsync plus
`requests` in this process, polling every 0.1 s. Rounds alternate so drift hits both.

Against a configured host when FLASHPODS_API_TOKEN is set (e.g. the lab, from the laptop
namespace); otherwise a local one is started (podman service, flashpods-api, rsyncd;
integration/client/client_stack.py) and torn down afterwards.

    python bench/client_overhead.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration" / "client"))
sys.path.insert(0, str(REPO / "testing"))  # the scaffolding client_stack builds on

from client_stack import BIN, flashpods_api, rsync_daemon  # noqa: E402
from flashpods.client.config import load_config  # noqa: E402
from flashpods.client.upload import DEFAULT_EXCLUDES, new_upload_id, rsync_command  # noqa: E402
from flashpods.common.jobstates import OVER  # noqa: E402
from flashpods_testing.localhost import podman_service  # noqa: E402


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    rsync_url: str

    def env(self) -> dict[str, str]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return {
            **os.environ,
            "FLASHPODS_API_TOKEN": self.token,
            "FLASHPODS_HOST": host,
            "FLASHPODS_PORT": port,
            "FLASHPODS_RSYNC_URL": self.rsync_url,
        }


@contextmanager
def target(work: Path) -> Iterator[Target]:
    if os.environ.get("FLASHPODS_API_TOKEN"):
        config = load_config()
        yield Target(config.base_url, config.token, config.rsync_url)
        return
    (work / "podman").mkdir()
    (work / "rsyncd").mkdir()
    with (
        podman_service(work / "podman") as sock,
        flashpods_api(work / "api", sock, "bench", FLASHPODS_RATE_LIMIT_PER_SECOND="0") as api,
        rsync_daemon(work / "rsyncd", api.uploads) as rsync_url,
    ):
        yield Target(api.url, api.token, rsync_url)


def run_cli(t: Target, project: Path, artifacts: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [
            str(BIN / "flashpods"),
            "run",
            "--dir",
            str(project),
            "--artifacts-dir",
            str(artifacts),
            "--",
            "true",
        ],
        env=t.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"flashpods run failed ({proc.returncode}): {proc.stderr}")
    return elapsed


def run_raw(t: Target, project: Path, session: requests.Session) -> float:
    start = time.perf_counter()
    upload_id = new_upload_id()
    argv = rsync_command(project, t.rsync_url, upload_id, DEFAULT_EXCLUDES, False)
    subprocess.run(argv, check=True, capture_output=True)
    session.post(f"{t.url}/uploads/{upload_id}/finalize", timeout=30).raise_for_status()
    created = session.post(
        f"{t.url}/jobs",
        json={
            "type": "worker",
            "command": "true",
            "files_id": upload_id,
            "client_job_id": str(uuid.uuid4()),
        },
        timeout=30,
    )
    created.raise_for_status()
    job_id = created.json()["job_id"]
    while True:
        job = session.get(f"{t.url}/jobs/{job_id}", timeout=30).json()
        if job["status"] in OVER:
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    if job["status"] != "completed":
        raise SystemExit(f"raw job {job_id} ended {job['status']}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flashpods-bench-") as tmp:
        work = Path(tmp)
        project = work / "project"
        (project / "src").mkdir(parents=True)
        for i in range(20):
            (project / "src" / f"file{i}.txt").write_text(f"content {i}\n" * 50)
        with target(work) as t, requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {t.token}"
            start = time.perf_counter()
            subprocess.run([str(BIN / "flashpods"), "--help"], capture_output=True, check=True)
            startup = time.perf_counter() - start
            # One unmeasured round each: podman and the page cache warm up.
            run_cli(t, project, work / "arts")
            run_raw(t, project, session)
            cli, raw = [], []
            for _ in range(args.rounds):
                cli.append(run_cli(t, project, work / "arts"))
                raw.append(run_raw(t, project, session))
    cli_median, raw_median = statistics.median(cli), statistics.median(raw)
    print(f"target:                     {t.url} (rsync {t.rsync_url})")
    print(f"rounds:                     {args.rounds} (after one warm-up each)")
    print(
        f"flashpods run -- true:      median {cli_median:.3f} s  "
        f"min {min(cli):.3f}  max {max(cli):.3f}"
    )
    print(
        f"raw rsync + HTTP calls:     median {raw_median:.3f} s  "
        f"min {min(raw):.3f}  max {max(raw):.3f}"
    )
    print(f"CLI start-up (--help):      {startup:.3f} s")
    print(f"overhead:                   {cli_median - raw_median:+.3f} s")
    print(f"ratio CLI / raw (medians):  {cli_median / raw_median:.2f}")


if __name__ == "__main__":
    main()
