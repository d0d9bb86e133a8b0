{
  description = "Flashpods: a self-hosted compute backend for AI coding agents (NixOS host)";

  inputs = {
    # The seed's choice: the host runs nixos-24.05.
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
    # Only for two tools nixos-24.05 cannot provide: SPIRE >= 1.13 (the configs and the
    # bootstrap are written for the lab's 1.13; 24.05 ships 1.9, and 1.13 needs Go >= 1.25)
    # and a ruff whose formatting matches the one the project develops with.
    nixpkgs-recent.url = "github:NixOS/nixpkgs/nixos-25.11";
  };

  outputs =
    {
      self,
      nixpkgs,
      nixpkgs-recent,
    }:
    let
      system = "x86_64-linux";
      inherit (nixpkgs) lib;
      pkgs = nixpkgs.legacyPackages.${system};
      recent = nixpkgs-recent.legacyPackages.${system};
      inherit (recent) spire;

      # Modules get SPIRE from the nixpkgs-recent input unless the user sets another.
      # Every nixosModules.* imports this one module; its `key` makes the module system
      # load it once however many of them a configuration imports (lib/modules.nix,
      # collectModules: modules are deduplicated by key). Without it each import adds a
      # definition of the option, and a types.package option takes one definition only
      # (lib/types.nix, `package`: mergeOneOption), so importing two concerns failed.
      spireFromFlake = {
        key = "flashpods#spireFromFlake";
        _file = "flake.nix#spireFromFlake";
        config.services.flashpods.spire.package = lib.mkDefault spire;
      };
      concern = file: {
        imports = [
          file
          spireFromFlake
        ];
      };
    in
    {
      nixosModules = {
        wireguard = concern ./modules/wireguard.nix;
        firewall = concern ./modules/firewall.nix;
        podman = concern ./modules/podman.nix;
        rsyncd = concern ./modules/rsyncd.nix;
        spire = concern ./modules/spire.nix;
        flashpods-api = concern ./modules/flashpods-api.nix;
        token-service = concern ./modules/token-service.nix;
        default = {
          imports = [
            ./modules/wireguard.nix
            ./modules/firewall.nix
            ./modules/podman.nix
            ./modules/rsyncd.nix
            ./modules/spire.nix
            ./modules/flashpods-api.nix
            ./modules/token-service.nix
            spireFromFlake
          ];
        };
      };

      # `nixos-rebuild switch --flake .#flashpods`: the seed's module list in the seed's order.
      nixosConfigurations.flashpods = nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [
          ./configuration.nix
          ./modules/wireguard.nix
          ./modules/firewall.nix
          ./modules/podman.nix
          ./modules/rsyncd.nix
          ./modules/spire.nix
          ./modules/flashpods-api.nix
          ./modules/token-service.nix
          spireFromFlake
        ];
      };

      packages.${system} = rec {
        flashpods = pkgs.callPackage ./nix/flashpods.nix { };
        default = flashpods;
        inherit (flashpods) spiffe sqlite-utils;
        # What job containers mount at /opt/flashpods (static spire-agent + entrypoints).
        tools = pkgs.callPackage ./nix/tools.nix { inherit spire; };
        # The job image with the agent (docs/nixos.md): podman.preloadImages loads it.
        claude-code = pkgs.callPackage ./nix/claude-code.nix { };
        job-image = pkgs.callPackage ./nix/job-image.nix { inherit claude-code; };
      };

      formatter.${system} = pkgs.nixfmt-rfc-style;

      checks.${system} =
        let
          vmTest = file: import file { inherit pkgs self; };
        in
        {
          vm-network = vmTest ./vm-tests/network.nix;
          vm-jobs = vmTest ./vm-tests/jobs.nix;
          python-unit = pkgs.callPackage ./nix/python-unit.nix {
            inherit (self.packages.${system}) flashpods;
          };
          python-format = pkgs.callPackage ./nix/python-format.nix { inherit (recent) ruff; };
          nix-static = pkgs.callPackage ./nix/static-tests.nix { inherit (recent) ruff; };
        }
        # Every package builds (and its import checks pass).
        // lib.mapAttrs' (name: drv: lib.nameValuePair "package-${name}" drv) self.packages.${system};
    };
}
