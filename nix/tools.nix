# FLASHPODS_TOOLS_DIR: mounted read-only at /opt/flashpods in every job container, so any
# image with sh, curl and jq can attest to SPIRE and exchange tokens. It holds
# bin/spire-agent (the Workload API CLI) and the container entrypoints of ../container/bin.
#
# Job images are not NixOS: a binary that needs the Nix store's glibc would not run in
# them, so the agent is rebuilt without cgo (statically linked; the agent's code paths
# used here need no C). The build fails if the result is dynamically linked.
{
  lib,
  runCommand,
  spire,
  file,
}:

let
  staticAgent = spire.overrideAttrs (old: {
    pname = "spire-agent-static";
    # `spire` comes from the flake's nixpkgs-recent input, whose buildGoModule reads
    # CGO_ENABLED from `env`.
    env = (old.env or { }) // {
      CGO_ENABLED = "0";
    };
    subPackages = [ "cmd/spire-agent" ];
    outputs = [ "out" ];
    postInstall = "";
    # nixpkgs' spire runs SPIRE's whole test suite (pkgs/by-name/sp/spire/package.nix:
    # `preCheck = "unset subPackages"`), which does not compile without cgo:
    # pkg/server/datastore/sqlstore/sqlite_test.go calls a function defined only under
    # `//go:build cgo`, and test/fakes/fakedatastore opens the sqlite3 dialect, which
    # SPIRE refuses without cgo. vm-jobs runs the built agent against the real server.
    doCheck = false;
    doInstallCheck = false;
  });
  containerBin = ../container/bin;
in
runCommand "flashpods-tools"
  {
    nativeBuildInputs = [ file ];
    passthru = {
      inherit staticAgent;
    };
    meta.description = "Tools mounted at /opt/flashpods in Flashpods job containers";
  }
  ''
    mkdir -p "$out/bin"
    install -m 0755 ${staticAgent}/bin/spire-agent "$out/bin/spire-agent"
    if file -L "$out/bin/spire-agent" | grep -q 'dynamically linked'; then
      echo "spire-agent is dynamically linked; job images could not run it" >&2
      exit 1
    fi
    ${lib.optionalString (builtins.pathExists containerBin) ''
      for script in ${containerBin}/*; do
        install -m 0755 "$script" "$out/bin/$(basename "$script")"
      done
    ''}
    test -x "$out/bin/flashpods-agent-entrypoint" || {
      echo "container/bin/flashpods-agent-entrypoint is missing" >&2
      exit 1
    }
  ''
