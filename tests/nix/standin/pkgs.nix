# A stub `pkgs` of nixos-24.05 for evaluating the package expressions in nix/ and the
# modules without nixpkgs. Only attributes nixos-24.05 has exist here, so an expression
# that asks for another one (a package of a later release, a renamed one) fails with
# "attribute missing", as callPackage fails on the real set. Derivations are fake store
# paths; forcing one runs the checks a real build would fail on:
#
# - buildGoModule with cgo off (CGO_ENABLED=0) whose checks still run: nixpkgs' `spire`
#   runs SPIRE's whole test suite (pkgs/by-name/sp/spire/package.nix, `preCheck = "unset
#   subPackages"`), which needs cgo (the sqlite3 datastore tests).
# - pythonRelaxDeps without pythonRelaxDepsHook: in nixos-24.05 the hook is not added
#   automatically (pkgs/development/interpreters/python/mk-python-derivation.nix).
#
# `spireRecent` is the nixos-25.11 input's spire (the flake passes it to nix/tools.nix).
{ lib }:

let
  inherit (builtins)
    functionArgs
    isFunction
    isPath
    listToAttrs
    map
    seq
    ;
  fail = message: abort message;
  storePath = name: "/nix/store/00000000000000000000000000000000-${name}";

  # A derivation whose outPath, when forced, evaluates its attributes and runs `check` on them.
  mkDrv =
    check: attrs:
    let
      name = attrs.name or "${attrs.pname}-${attrs.version}";
      self =
        attrs
        // attrs.passthru or { }
        // {
          type = "derivation";
          inherit name;
          # As instantiating a derivation does: every attribute but passthru and meta is
          # evaluated (so a missing file or attribute in any of them fails here).
          outPath = seq (check attrs) (
            builtins.deepSeq (removeAttrs attrs [
              "passthru"
              "meta"
            ]) (storePath name)
          );
          drvAttrs = attrs;
          overrideAttrs =
            f:
            let
              changes = if isFunction (f attrs) then f attrs attrs else f attrs;
            in
            mkDrv check (attrs // changes);
        };
    in
    self;
  plain = mkDrv (_: true);
  pkg = name: plain { inherit name; };
  # A builder whose build script interpolates other derivations: forcing it forces theirs.
  scripted = field: mkDrv (attrs: seq attrs.${field} true);

  goBuildChecks =
    attrs:
    let
      cgo = toString (attrs.env.CGO_ENABLED or attrs.CGO_ENABLED or "1");
    in
    if cgo == "0" && (attrs.doCheck or true) then
      fail "buildGoModule ${attrs.pname}: CGO_ENABLED=0 but doCheck is not false; its test suite needs cgo and the build fails"
    else
      true;
  buildGoModule = attrs: mkDrv goBuildChecks ({ doCheck = true; } // attrs);

  pythonChecks =
    attrs:
    if
      (attrs.pythonRelaxDeps or [ ]) != [ ]
      && !(builtins.elem python3Packages.pythonRelaxDepsHook (attrs.nativeBuildInputs or [ ]))
    then
      fail "${attrs.pname}: pythonRelaxDeps without pythonRelaxDepsHook (nixos-24.05 does not add it)"
    else
      true;

  # callPackage: every argument without a default must exist in `scope`.
  callPackageWith =
    scope: fn: overrides:
    let
      f = if isPath fn then import fn else fn;
      wanted = functionArgs f;
      given = listToAttrs (
        map (name: {
          inherit name;
          value =
            if overrides ? ${name} then
              overrides.${name}
            else if scope ? ${name} then
              scope.${name}
            else
              fail "callPackage: `${name}' is not an attribute of nixos-24.05's package set";
        }) (builtins.filter (name: overrides ? ${name} || scope ? ${name} || !wanted.${name}) (
          builtins.attrNames wanted
        ))
      );
    in
    f given;

  # nixos-24.05's python3Packages (Python 3.11): the packages nix/*.nix use (their versions
  # are not modelled; docs/nixos.md lists what was checked about them).
  python3Packages = rec {
    callPackage = callPackageWith (pkgs // python3Packages);
    buildPythonPackage = mkDrv pythonChecks;
    buildPythonApplication = mkDrv pythonChecks;
    fetchPypi = attrs: plain { name = "${attrs.pname}-${attrs.version}.tar.gz"; };
    toPythonModule = drv: drv;
    pythonRelaxDepsHook = plain { name = "python-relax-deps-hook"; };
    setuptools = pkg "setuptools";
    poetry-core = pkg "poetry-core";
    requests = pkg "requests";
    cryptography = pkg "cryptography";
    pyjwt = pkg "pyjwt";
    grpcio = pkg "grpcio";
    protobuf = pkg "protobuf";
    pem = pkg "pem";
    pyasn1 = pkg "pyasn1";
    pyasn1-modules = pkg "pyasn1-modules";
    click = pkg "click";
    click-default-group = pkg "click-default-group";
    pip = pkg "pip";
    pluggy = pkg "pluggy";
    python-dateutil = pkg "python-dateutil";
    sqlite-fts4 = pkg "sqlite-fts4";
    tabulate = pkg "tabulate";
    pytest = pkg "pytest";
    hypothesis = pkg "hypothesis";
    pytest-testinfra = pkg "pytest-testinfra";
    pyyaml = pkg "pyyaml";
    mypy = pkg "mypy";
  };

  python3 = pkg "python3" // {
    pkgs = python3Packages;
    withPackages =
      f:
      mkDrv (attrs: builtins.deepSeq (map (p: p.outPath) attrs.paths) true) {
        name = "python3-env";
        paths = f python3Packages;
      };
  };

  pkgs = {
    inherit
      lib
      python3
      python3Packages
      buildGoModule
      ;
    callPackage = callPackageWith pkgs;
    stdenvNoCC.mkDerivation = mkDrv (attrs: seq (attrs.buildPhase or attrs.installPhase) true);
    fetchurl = attrs: plain { name = baseNameOf attrs.url; };
    autoPatchelfHook = pkg "auto-patchelf-hook";
    # buildLayeredImage: forcing the image forces what it contains.
    dockerTools.buildLayeredImage =
      attrs:
      mkDrv (a: builtins.deepSeq (map (p: p.outPath) a.contents) true) (
        attrs // { name = "${attrs.name}.tar.gz"; }
      );
    bashInteractive = pkg "bash-interactive";
    cacert = pkg "cacert";
    curl = pkg "curl";
    findutils = pkg "findutils";
    gnugrep = pkg "gnugrep";
    gnused = pkg "gnused";
    procps = pkg "procps";
    python3Minimal = pkg "python3-minimal";
    runCommand = name: env: script: scripted "script" ({ inherit name script; } // env);
    writeText = name: text: plain { inherit name text; };
    coreutils = pkg "coreutils";
    wireguard-tools = pkg "wireguard-tools";
    # vm-tests/nodes.nix's job image: forcing it forces its root's packages.
    buildEnv = mkDrv (a: builtins.deepSeq (map (p: p.outPath) a.paths) true);
    dockerTools.buildImage =
      attrs:
      mkDrv (a: builtins.deepSeq a.copyToRoot.outPath true) (
        attrs // { name = "${baseNameOf attrs.name}.tar.gz"; }
      );
    file = pkg "file";
    git = pkg "git";
    jq = pkg "jq";
    rsync = pkg "rsync";
    systemd = pkg "systemd";
    podman = pkg "podman";
    nix = pkg "nix";
    ruff = pkg "ruff";
    # nixos-24.05's spire (pkgs/tools/security/spire): 1.9; too old for the configs.
    spire = buildGoModule {
      pname = "spire";
      version = "1.9.6";
      outputs = [
        "out"
        "agent"
        "server"
      ];
      subPackages = [
        "cmd/spire-agent"
        "cmd/spire-server"
      ];
    };
  };

  # nixos-25.11's spire as pkgs/by-name/sp/spire/package.nix builds it: all outputs, the
  # whole test suite in checkPhase, an install check that runs every binary.
  spireRecent = buildGoModule {
    pname = "spire";
    version = "1.13.3";
    outputs = [
      "out"
      "agent"
      "server"
      "oidc"
    ];
    subPackages = [
      "cmd/spire-agent"
      "cmd/spire-server"
      "support/oidc-discovery-provider"
    ];
    preCheck = "unset subPackages";
    doInstallCheck = true;
    env = { };
  };
in
{
  inherit pkgs spireRecent;
}
