# flake.nix's outputs, called with stand-in inputs: nixpkgs' lib is standin/lib.nix (its
# nixosSystem returns the module list, which eval-modules.nix evaluates) and both package
# sets are standin/pkgs.nix's nixos-24.05 stub, nixpkgs-recent giving the 25.11 spire.
let
  lib = import ./lib.nix;
  stub = import ./pkgs.nix { inherit lib; };
  system = "x86_64-linux";
  flake = (import ../../../flake.nix).outputs {
    self = flake // {
      outPath = toString ../../..;
    };
    nixpkgs = {
      lib = lib // {
        nixosSystem = args: args;
      };
      legacyPackages.${system} = stub.pkgs;
    };
    nixpkgs-recent.legacyPackages.${system} = {
      spire = stub.spireRecent;
      inherit (stub.pkgs) ruff;
    };
  };
in
{
  inherit lib stub system flake;
}
