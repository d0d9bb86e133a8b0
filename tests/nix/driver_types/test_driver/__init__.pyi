"""Type stubs of the NixOS test driver (nixos/lib/test-driver, nixos-24.05), only the names
and signatures the VM test scripts use, so tests/nix can type-check them as the driver
does before it runs them (mypy over a typed header + the script)."""
