# Rootless podman for the flashpods user, its docker-compatible API socket (used by the
# API and by the SPIRE agent's docker workload attestor) and the job images.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types;
  inherit (import ./lib/render.nix) data;
  cfg = config.services.flashpods;
  podman = config.virtualisation.podman.package; # wrapped: finds newuidmap in /run/wrappers
  socketPath = data.apiEnvironment.FLASHPODS_PODMAN_SOCKET;
  runtimeDir = "/run/user/${toString cfg.uid}";
  # Run podman as the flashpods user against its own API service, so pulls and loads land
  # in the same (rootless) storage the jobs use.
  remote = "${podman}/bin/podman --url unix://${socketPath}";
  userUnit = "user@${toString cfg.uid}.service";
in
{
  imports = [ ./common.nix ];

  options.services.flashpods.podman = {
    prePullImages = mkOption {
      type = types.listOf types.str;
      default = [
        "rust:latest"
        "rust:1.75"
        "node:20"
        "node:18"
        "python:3.12"
        "python:3.11"
        "ubuntu:24.04"
        "ubuntu:22.04"
        "alpine:latest"
      ];
      description = ''
        Images pulled once the network is online (best effort: a failed pull is logged
        and skipped, so an offline boot is not delayed or failed by it).
      '';
    };

    preloadImages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = lib.literalExpression ''[ (pkgs.dockerTools.buildImage { name = "job"; tag = "latest"; }) ]'';
      description = ''
        Image archives (e.g. from `pkgs.dockerTools`) loaded into the flashpods user's
        storage with `podman load` at boot; for offline hosts and the VM tests.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    virtualisation.podman = {
      enable = true;
      dockerCompat = true;
    };

    # The API socket is owned by a socket unit: it exists with mode 0660 flashpods:flashpods
    # before anyone connects, and its inode survives restarts of the service.
    systemd.sockets.podman-socket-flashpods = {
      description = "Podman API socket for Flashpods";
      wantedBy = [ "sockets.target" ];
      requires = [ "flashpods-paths.service" ];
      after = [ "flashpods-paths.service" ];
      listenStreams = [ socketPath ];
      socketConfig = {
        SocketUser = data.user;
        SocketGroup = data.group;
        SocketMode = "0660";
        DirectoryMode = "0750";
      };
    };

    systemd.services.podman-socket-flashpods = {
      description = "Podman API service for Flashpods (rootless, user ${data.user})";
      after = [
        "network.target"
        "flashpods-paths.service"
        "podman-socket-flashpods.socket"
        userUnit
      ];
      requires = [
        "flashpods-paths.service"
        "podman-socket-flashpods.socket"
        userUnit
      ];
      wantedBy = [ "multi-user.target" ];
      environment = {
        # Rootless podman keeps its runtime state here and reaches the user's systemd
        # (cgroup manager: each container gets its own libpod-<id>.scope, which the
        # SPIRE agent needs to attest it) through $XDG_RUNTIME_DIR/bus.
        XDG_RUNTIME_DIR = runtimeDir;
        DBUS_SESSION_BUS_ADDRESS = "unix:path=${runtimeDir}/bus";
        HOME = config.users.users.${data.user}.home;
      };
      serviceConfig = {
        Type = "exec";
        User = data.user;
        Group = data.group;
        # No URI: podman serves the listening socket systemd passes in.
        ExecStart = "${podman}/bin/podman system service --time=0";
        # Jobs must outlive a restart of the API service (as upstream's podman.service).
        KillMode = "process";
        Delegate = true;
        Restart = "always";
        RestartSec = "5s";
      };
    };

    systemd.services.flashpods-image-load = lib.mkIf (cfg.podman.preloadImages != [ ]) {
      description = "Load Flashpods job images into rootless podman";
      after = [ "podman-socket-flashpods.service" ];
      requires = [ "podman-socket-flashpods.service" ];
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        User = data.user;
        Group = data.group;
      };
      script = lib.concatMapStrings (image: ''
        ${remote} load --input ${image}
      '') cfg.podman.preloadImages;
    };

    # Seed: pre-pull common images. Not an activation script (activation runs before the
    # network, at every boot and switch): a best-effort oneshot after the network is up.
    systemd.services.flashpods-image-prepull = lib.mkIf (cfg.podman.prePullImages != [ ]) {
      description = "Pre-pull Flashpods job images (best effort)";
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "podman-socket-flashpods.service"
      ];
      requires = [ "podman-socket-flashpods.service" ];
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        Type = "oneshot";
        User = data.user;
        Group = data.group;
        TimeoutStartSec = "30min";
      };
      script = lib.concatMapStrings (image: ''
        ${remote} pull ${lib.escapeShellArg image} \
          || echo "warning: could not pull ${image}; jobs will pull it on demand" >&2
      '') cfg.podman.prePullImages;
    };
  };
}
