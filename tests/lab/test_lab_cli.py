"""The CLI's refusals: not root, or a missing program or kernel feature, is one clear
line naming what is missing, and nothing is touched."""

from __future__ import annotations

import pytest
from flashpods.lab import cli, preflight
from flashpods.lab.proc import LabError


def test_up_as_non_root_is_one_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for command in (["up"], ["down"]):
        assert cli.main(command) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            "flashpods-lab: flashpods-lab needs root (network namespaces, nftables, "
            "rootful podman); run it with sudo"
        ]


def test_missing_kernel_features_and_programs_are_named() -> None:
    checks = [
        preflight.Check("TUN device /dev/net/tun (wireguard-go)", False),
        preflight.Check("network namespaces (/proc/self/ns/net)", True),
        preflight.Check("program wireguard-go", False),
    ]
    with pytest.raises(LabError) as err:
        preflight.require(checks)
    assert str(err.value) == (
        "missing: TUN device /dev/net/tun (wireguard-go); program "
        "wireguard-go (run scripts/setup.sh)"
    )


def test_kernel_feature_missing_stops_up_before_anything(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    real = preflight.kernel_checks
    monkeypatch.setattr(
        preflight,
        "kernel_checks",
        lambda: [*real(), preflight.Check("TUN device /dev/net/tun (wireguard-go)", False)],
    )
    touched = []
    monkeypatch.setattr("flashpods.lab.lab.ensure_prerequisites", lambda: touched.append(1))
    assert cli.main(["up"]) == 1
    assert "missing: TUN device /dev/net/tun (wireguard-go)" in capsys.readouterr().err
    assert touched == []


@pytest.mark.parametrize(
    ("last", "now", "shown"),
    [
        (None, 1_700_000_000, "never"),  # the laptop's namespace is gone
        (0, 1_700_000_000, "never"),  # wg: no handshake yet
        (1_700_000_000, 1_700_000_012.9, "12 s ago"),
        (1_700_000_000, 1_700_000_000, "0 s ago"),
        (1_700_000_005, 1_700_000_000, "0 s ago"),  # clock stepped back
        (1_700_000_000, 1_700_000_059, "59 s ago"),
        (1_700_000_000, 1_700_000_060, "1 min 0 s ago"),
        (1_700_000_000, 1_700_000_000 + 3599, "59 min 59 s ago"),
        (1_700_000_000, 1_700_000_000 + 3600 * 26 + 125, "26 h 2 min ago"),
    ],
)
def test_handshake_is_shown_as_an_age(last: int | None, now: float, shown: str) -> None:
    assert cli.handshake_age(last, now) == shown
