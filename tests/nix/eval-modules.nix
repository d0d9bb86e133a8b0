# Evaluate the Flashpods NixOS modules WITHOUT nixpkgs, the way `nixos-rebuild` would
# evaluate them with nixos-24.05, as far as a stand-in can:
#
# - standin/lib.nix: nixpkgs' option types with their checks and merges (a package option
#   takes one definition, a str must agree, ...), mkIf/mkMerge/mkOverride priorities;
# - standin/modules.nix: the module system (imports deduplicated by key, definitions of
#   undeclared options fail);
# - standin/nixos.nix: the nixpkgs options we set or read, typed as nixos-24.05 declares
#   them, and what nixpkgs' own modules define next to ours;
# - standin/pkgs.nix: a stub package set with only nixos-24.05's attributes.
#
# The module lists are the flake's own: flake.nix's `outputs` is called with stand-in
# inputs, so `nixosConfigurations.flashpods` and `nixosModules.*` are evaluated as written.
#
#   nix-instantiate --eval --strict --json --expr 'import ./tests/nix/eval-modules.nix { }'
{
  # One more module, e.g. { services.flashpods.hostCapacity.cpus = 4; } or
  # { pkgs, ... }: { services.flashpods.spire.package = pkgs.spire; }.
  settings ? { },
  # null: nixosConfigurations.flashpods; or names of nixosModules imported together (and
  # enabled).
  nixosModules ? null,
  # The `host` node of the VM tests (vm-tests/nodes.nix) instead, with the test's defaults.
  vmHost ? false,
}:

let
  inherit (import ./standin/flake.nix) lib stub flake;

  host = {
    _file = "eval-modules.nix#host";
    services.flashpods.enable = true;
  };
  vmTest = import ../../vm-tests/nodes.nix { self = flake; } { inherit lib; };
  selected =
    if vmHost then
      [
        vmTest.defaults
        vmTest.nodes.host
      ]
    else if nixosModules == null then
      flake.nixosConfigurations.flashpods.modules
    else
      map (name: flake.nixosModules.${name}) nixosModules ++ [ host ];

  evaluated = lib.evalModules {
    modules =
      [ ./standin/nixos.nix ]
      ++ selected
      ++ [
        {
          _file = "eval-modules.nix#settings";
          imports = [ settings ];
        }
      ];
    args.pkgs = stub.pkgs;
  };
  inherit (evaluated) config;

  # JSON-friendly: derivations become their store paths; options nobody defined (nixpkgs
  # throws "used but not defined" on reading them) are left out. Type and uniqueness
  # errors abort, so they cannot be left out.
  clean =
    value:
    if lib.isDerivation value then
      value.outPath
    else if builtins.isAttrs value && (value._type or null) == "literalExpression" then
      value.text
    else if builtins.isAttrs value then
      builtins.listToAttrs (
        builtins.concatMap (
          name:
          let
            tried = builtins.tryEval value.${name};
          in
          if tried.success then
            [
              {
                inherit name;
                value = clean tried.value;
              }
            ]
          else
            [ ]
        ) (builtins.attrNames value)
      )
    else if builtins.isList value then
      map clean value
    else if builtins.isFunction value then
      "<function>"
    else
      value;
in
{
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  # Everything the configuration defines, with fake store paths for packages.
  config = clean (removeAttrs config [ "assertions" ]);
}
