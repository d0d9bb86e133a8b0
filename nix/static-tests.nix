# checks.<system>.nix-static: tests/nix (what .ci/run runs on Debian's nix 2.8) once more
# with nixpkgs' nix: every .nix parses, the data and the modules evaluate against the
# stand-in of nixpkgs (tests/nix/standin) and equal the lab's values, the package
# expressions evaluate against the nixos-24.05 stub, the VM test scripts lint and
# type-check. The sandbox has no
# store daemon; evaluation needs none (NIX_REMOTE=dummy://).
{
  lib,
  stdenvNoCC,
  python3,
  nix,
  ruff,
  systemd,
}:

let
  pythonEnv = python3.withPackages (ps: [
    ps.pytest
    ps.mypy
  ]);
in
stdenvNoCC.mkDerivation {
  name = "flashpods-nix-static";
  src = lib.fileset.toSource {
    root = ../.;
    # tests/nix evaluates every package expression of nix/, so it needs their sources too.
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../flake.nix
      ../configuration.nix
      ../modules
      ../nix
      ../vm-tests
      ../tests
      ../testing
      ../services
      ../docs
      ../container
    ];
  };
  nativeBuildInputs = [
    pythonEnv
    nix
    ruff
    # systemd-analyze security --offline (tests/nix/test_nix_security.py)
    systemd
  ];
  dontConfigure = true;
  dontInstall = true;
  buildPhase = ''
    runHook preBuild
    export HOME=$TMPDIR NIX_REMOTE=dummy:// NIX_STATE_DIR=$TMPDIR/nix
    export PYTHONPATH=$PWD/services FLASHPODS_REPO=$PWD
    python -m pytest -p no:cacheprovider tests/nix
    touch $out
    runHook postBuild
  '';
}
