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
  # nixos-24.05's requests may be older than the minimum pyproject names; spiffe is 0.2.2
  # (nix/py-spiffe.nix explains why).
  pythonRelaxDeps = [
    "requests"
    "spiffe"
  ];

  propagatedBuildInputs = [
    python3Packages.requests
    sqlite-utils
    spiffe
    # Imported directly (token validation, SPIRE bootstrap), not only through spiffe.
    python3Packages.cryptography
    python3Packages.pyjwt
  ];

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
  };

  meta = {
    description = "Self-hosted compute backend for AI coding agents (API, token service, CLI)";
    mainProgram = "flashpods";
    platforms = lib.platforms.linux;
  };
}
