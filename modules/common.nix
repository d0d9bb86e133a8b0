# Options and state every Flashpods concern shares: the switch, the package, the service
# user and the host's directories and files with the seed's modes and owners.
#
# Every concern module imports this file (the module system loads it once), so each of
# them also works on its own as nixosModules.<concern>.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types;
  render = import ./lib/render.nix;
  inherit (render) data;
  cfg = config.services.flashpods;

  # Directories and operator-provided files of data.paths. An "f" line creates the file
  # empty if it is missing and resets its mode and owner.
  tmpfilesRules = render.tmpfilesRules;
  tmpfilesFile = pkgs.writeText "flashpods-tmpfiles.conf" (lib.concatLines tmpfilesRules);
in
{
  options.services.flashpods = {
    enable = lib.mkEnableOption "Flashpods, a self-hosted compute backend for AI coding agents";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../nix/flashpods.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./nix/flashpods.nix { }";
      description = "The Flashpods package providing flashpods-api and flashpods-token-service.";
    };

    uid = mkOption {
      type = types.ints.between 1000 60000;
      default = 2000;
      description = ''
        UID of the `${data.user}` account. Rootless podman needs a fixed one: its API
        socket is `/run/user/<uid>/podman/podman.sock`, served by `user@<uid>.service`.
      '';
    };

    logLevel = mkOption {
      type = types.enum [
        "debug"
        "info"
        "warning"
        "error"
      ];
      default = data.apiEnvironment.RUST_LOG;
      description = "Log level of both services (the seed's `RUST_LOG`).";
    };

    secretsFile = mkOption {
      type = types.str;
      default = data.tokenServiceEnvironment.FLASHPODS_SECRETS_FILE;
      description = ''
        JSON file with `anthropic_api_key` and `github_token`, read by the token service
        (root, 0600). Give a path outside the Nix store; it is never copied into it.
      '';
    };

    # The network identity every concern needs (firewall, API bind address, rsync).
    wireguard = {
      interface = mkOption {
        type = types.str;
        default = data.wireguard.interface;
        description = "WireGuard interface carrying the laptop's traffic.";
      };

      hostAddress = mkOption {
        type = types.str;
        default = data.wireguard.hostAddress;
        description = "The host's address on the tunnel (the API binds it).";
      };

      laptopAddress = mkOption {
        type = types.str;
        default = data.wireguard.laptopAddress;
        description = "The laptop's tunnel address: the only source allowed to reach the API and rsync.";
      };

      prefixLength = mkOption {
        type = types.ints.between 1 32;
        default = data.wireguard.prefixLength;
        description = "Prefix length of the tunnel network.";
      };

      listenPort = mkOption {
        type = types.port;
        default = data.wireguard.listenPort;
        description = "UDP port WireGuard listens on (opened in the firewall).";
      };
    };

    api.port = mkOption {
      type = types.port;
      default = data.api.port;
      description = "TCP port of the API on the tunnel address (opened for the WireGuard interface only).";
    };

    spire.package = mkOption {
      type = types.package;
      default = pkgs.spire;
      defaultText = lib.literalExpression "pkgs.spire";
      description = ''
        SPIRE (server, agent and the agent CLI for job containers). The configuration and
        bootstrap are written for SPIRE ${data.spire.version}; nixos-24.05's `pkgs.spire`
        is 1.9, too old (`join_token_file`, JSON CLI output), so the flake sets this to the
        `spire` of its `nixpkgs-recent` input.
      '';
    };

    hostCapacity = {
      cpus = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "CPUs the API may hand out to running jobs (`FLASHPODS_HOST_CPUS`); null = the machine's.";
      };
      memoryGb = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "Memory in GB the API may hand out (`FLASHPODS_HOST_MEMORY_GB`); null = the machine's.";
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !(lib.hasPrefix builtins.storeDir cfg.secretsFile);
        message = "services.flashpods.secretsFile must not be in the Nix store (it holds secrets).";
      }
    ];

    users.groups.${data.group} = { };
    users.users.${data.user} = {
      # Seed: a normal user (which also gets subuid/subgid ranges for rootless podman)
      # with lingering, so its systemd user manager runs without a login.
      isNormalUser = true;
      inherit (cfg) uid;
      group = data.group;
      linger = true;
      description = "Flashpods API and rootless podman";
    };

    systemd.tmpfiles.rules = tmpfilesRules;

    # The same rules once more, as a unit every Flashpods service requires: tmpfiles at
    # boot runs before sysinit.target, but after `nixos-rebuild switch` new units may
    # start before tmpfiles is re-applied, and a missing ReadWritePaths= entry makes a
    # hardened unit fail with 226/NAMESPACE.
    systemd.services.flashpods-paths = {
      description = "Flashpods directories and files (seed modes and owners)";
      wantedBy = [ "sysinit.target" ];
      before = [
        "sysinit.target"
        "shutdown.target"
      ];
      after = [
        "local-fs.target"
        "systemd-tmpfiles-setup.service"
      ];
      conflicts = [ "shutdown.target" ];
      unitConfig.DefaultDependencies = false;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${config.systemd.package}/bin/systemd-tmpfiles --create ${tmpfilesFile}";
      };
    };
  };
}
