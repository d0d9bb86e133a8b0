# The flake's packages and its non-VM checks, evaluated against the nixos-24.05 stub
# (standin/pkgs.nix) and forced, so every attribute they ask for must exist in nixos-24.05
# and the stub's build-time checks run. Returns { <name> = <store path>; }.
#
#   nix-instantiate --eval --strict --json tests/nix/eval-packages.nix
let
  inherit (import ./standin/flake.nix) flake system;
  checks = removeAttrs flake.checks.${system} [
    # pkgs.testers.runNixOSTest boots VMs: only `nix flake check` on a KVM machine.
    "vm-network"
    "vm-jobs"
  ];
in
builtins.mapAttrs (_: drv: drv.outPath) (flake.packages.${system} // checks)
