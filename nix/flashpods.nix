# The Flashpods Python services and the laptop CLI, built from the repository's
# pyproject.toml (setuptools backend, sources in services/).
#
# Entry points: flashpods-api, flashpods-token-service, flashpods-spire (host), flashpods
# (laptop CLI), flashpods-lab. The MCP server (flashpods-mcp) needs the `mcp` SDK, which nixos-24.05
# does not package: it is dropped here (`pythonRemoveDeps`, binary removed) and is
# installed on the laptop with pip instead (docs/deploy.md).
{
  lib,
  python3Packages,
  spiffe ? python3Packages.callPackage ./py-spiffe.nix { },
  sqlite-utils ? python3Packages.callPackage ./sqlite-utils.nix { },
}:

let
  # pyproject's `host` extra (the API, token service and SPIRE bootstrap need it; this
  # package is what the host runs). cryptography and PyJWT are imported directly.
  hostDependencies = [
    sqlite-utils
    spiffe
    python3Packages.cryptography
    python3Packages.pyjwt
  ];
in
python3Packages.buildPythonApplication {
  pname = "flashpods";
  version = (builtins.fromTOML (builtins.readFile ../pyproject.toml)).project.version;
  pyproject = true;

  # Only what the wheel is built from, so unrelated edits do not rebuild the services.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../services/flashpods
    ];
  };

  nativeBuildInputs = with python3Packages; [
    setuptools
    pythonRelaxDepsHook
  ];

  pythonRemoveDeps = [ "mcp" ];
  # nixos-24.05's requests may be older than the minimum pyproject names. The `host`
  # extra's requirements carry an `extra == "host"` marker, which the runtime-deps check
  # skips (python-runtime-deps-check-hook.py evaluates markers without an extra), so
  # spiffe 0.2.2 (nix/py-spiffe.nix explains why) needs no relaxing.
  pythonRelaxDeps = [ "requests" ];

  propagatedBuildInputs = [ python3Packages.requests ] ++ hostDependencies;

  postInstall = ''
    rm -f "$out/bin/flashpods-mcp"
  '';

  # The unit tests run as their own check (checks.<system>.python-unit in flake.nix).
  doCheck = false;

  pythonImportsCheck = [
    "flashpods"
    "flashpods.api.main"
    "flashpods.tokens.main"
    "flashpods.client.cli"
    "flashpods.spire.__main__"
  ];

  passthru = {
    inherit spiffe sqlite-utils;
    optional-dependencies.host = hostDependencies;
  };

  meta = {
    description = "Self-hosted compute backend for AI coding agents (API, token service, CLI)";
    mainProgram = "flashpods";
    platforms = lib.platforms.linux;
  };
}
