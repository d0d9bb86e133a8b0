"""A job from the laptop, end to end: `flashpods-lab demo` itself, and the same flow with
the SDK (upload over rsync, worker, log, artifact download), checked in detail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flashpods.lab.demo import SAMPLE_FILES, write_sample
from flashpods.lab.jobnet import LAB_JOB_NETWORK
from flashpods.lab.topology import Topology
from lab_helpers import CONTAINER_PROBE, Laptop, parse_probe, run_demo, secrets_file


def test_demo_runs_a_job_end_to_end(lab_up, tmp_path: Path, values: dict[str, Any]) -> None:
    proc = run_demo(tmp_path)
    out = proc.stdout
    assert "got a GITHUB_TOKEN from the token service" in out
    assert "./src/wordcount.py" in out  # the worker read /work
    for phase in ("upload", "finalize", "start", "run", "artifact download", "end to end"):
        assert f"{phase} " in out.split("summary:")[1]
    (artifact,) = (tmp_path / "flashpods-artifacts").glob("job_*/wordcount.txt")
    assert artifact.read_text().splitlines()[0].split() == ["3", "the"]
    secrets = secrets_file(values)
    assert secrets["github_token"] not in out + proc.stderr


def test_sdk_flow_upload_job_log_artifact(laptop: Laptop, tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_sample(project)
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("excluded by the client\n")

    def flow() -> tuple[Any, Any, str, Path, Any]:
        with laptop.client() as fp:
            upload = fp.upload(project)
            created = fp.create_worker(
                "cd /work && ls -R . && sha256sum README.md > /artifacts/readme.sha256 "
                "&& mkdir /artifacts/sub && echo nested > /artifacts/sub/n.txt "
                "&& echo to-stderr >&2",
                files_id=upload.upload_id,
            )
            job = fp.wait(created.job_id, timeout=120)
            log = fp.get_output(created.job_id).output
            files = fp.download_artifacts(created.job_id, tmp_path / "out")
            return upload, job, log, tmp_path / "out", (files, fp.get_upload(upload.upload_id))

    upload, job, log, out, (files, upload_after) = laptop.call(flow)
    assert upload.file_count == len(SAMPLE_FILES)  # .git was excluded
    assert job.status == "completed" and job.exit_code == 0
    assert "to-stderr" in log and "wordcount.py" in log
    assert all(line.startswith("[") for line in log.splitlines() if line)
    got = sorted(str(p.relative_to(out)) for p in files)
    assert got == ["readme.sha256", "sub/n.txt"]
    assert (out / "sub" / "n.txt").read_text() == "nested\n"
    import hashlib

    want = hashlib.sha256(SAMPLE_FILES["README.md"].encode()).hexdigest()
    assert (out / "readme.sha256").read_text().split()[0] == want
    assert upload_after.state == "consumed"
    assert not Path(f"/tmp/flashpods/uploads/{upload.upload_id}").exists()
    assert Path(f"/var/lib/flashpods/artifacts/{job.id}/sub/n.txt").exists()
    assert Path(f"/var/log/flashpods/{job.id}.log").exists()


# The job's default gateway (/proc/net/route: little-endian hex), then the probe of the
# API and rsync on the tunnel address and on that gateway.
GATEWAY = r"""
echo "gateway $(awk '$2 == "00000000" { print $3 }' /proc/net/route)"
"""


def test_an_api_job_is_on_the_lab_job_network_and_reaches_only_the_internet(
    laptop: Laptop, topo: Topology
) -> None:
    gateway = LAB_JOB_NETWORK.gateway
    targets = [f"{addr}:{port}" for addr in (topo.host_addr, gateway) for port in (8080, 873)]
    command = f"{GATEWAY}\nset -- {' '.join(targets)}\n{CONTAINER_PROBE}"

    def job() -> tuple[Any, str]:
        with laptop.client() as fp:
            created = fp.create_worker(command, cpus=1)
            return fp.wait(created.job_id, timeout=120), fp.get_output(created.job_id).output

    final, log = laptop.call(job)
    assert final.status == "completed", final
    result = parse_probe("".join(line.split("] ", 1)[1] + "\n" for line in log.splitlines()))
    route = bytes.fromhex(result.pop("gateway"))[::-1]
    assert ".".join(str(b) for b in route) == gateway
    assert result.pop("internet") == "hello from the internet"
    assert result == dict.fromkeys(targets, "dropped")
