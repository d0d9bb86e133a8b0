# checks.<system>.python-unit: the Python unit tests (tests/) against the packaged
# dependencies, without a VM. Excluded here: tests/nix (its own check, nix-static), the
# MCP server's tests and the laptop-install check (they need the `mcp` SDK, which is not
# in nixos-24.05), tests marked podman/spire/lab
# (real components, run by .ci/run) and the one test that needs root (chown/setuid; the
# build user is not root). Without nft in the sandbox the nft --check test skips itself
# (nixpkgs checks the ruleset at build time).
{
  lib,
  stdenvNoCC,
  python3,
  flashpods,
  git,
  jq,
  rsync,
}:

let
  pythonEnv = python3.withPackages (
    ps:
    [
      ps.pytest
      ps.hypothesis
      ps.pytest-testinfra
      ps.requests
      ps.cryptography
      ps.pyjwt
      ps.pyyaml
      flashpods.spiffe
      flashpods.sqlite-utils
      # Its console scripts land next to the interpreter, where tests look for them.
      (ps.toPythonModule flashpods)
    ]
  );
  deploymentJson = builtins.toFile "flashpods-deployment.json" (
    builtins.toJSON (import ../modules/data/flashpods.nix)
  );
in
stdenvNoCC.mkDerivation {
  name = "flashpods-python-unit";
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions (
      [
        ../pyproject.toml
        ../README.md
        ../services
        ../tests
        ../modules/data
        ../docs
      ]
      # The job-side scripts some tests read, once they exist.
      ++ lib.optional (builtins.pathExists ../container) ../container
    );
  };
  nativeBuildInputs = [
    pythonEnv
    git
    jq
    rsync
  ];
  dontConfigure = true;
  dontInstall = true;
  buildPhase = ''
    runHook preBuild
    export HOME=$TMPDIR
    export PYTHONPATH=$PWD/services
    export FLASHPODS_REPO=$PWD
    # flashpods.deployment reads the data from here instead of running nix-instantiate.
    export FLASHPODS_DEPLOYMENT_JSON=${deploymentJson}
    python -m pytest -p no:cacheprovider tests \
      --ignore=tests/nix \
      --ignore=tests/client/test_client_mcp.py \
      --ignore=tests/client/test_client_install.py \
      -m "not podman and not spire and not lab" \
      -k "not test_remove_tree_empties_read_only_directories_as_their_owner"
    touch $out
    runHook postBuild
  '';
}
