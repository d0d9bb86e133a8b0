# Rootless podman for the flashpods user, its docker-compatible API socket (used by the
# API and by the SPIRE agent's docker workload attestor) and the job images.
#
# The API socket is the flashpods user's OWN podman.socket, a unit of its systemd user
# manager (started at boot: the user lingers), at /run/user/<uid>/podman/podman.sock. That
# is podman's supported rootless set-up (containers/podman contrib/systemd/README.md,
# "user (podman service run as given user aka rootless)"); rootless podman in a SYSTEM
# unit with User= is not (podman issues 14106: "the User= and Group= directives are not
# supported", 12778: fails on cgroup v2), and only under the user manager does each
# container get its own libpod-<id>.scope with cpu/memory delegated (the limits and SPIRE
# attestation depend on it). nixpkgs enables podman.socket for every user manager
# (nixos/modules/virtualisation/podman/default.nix: `systemd.user.sockets.podman.wantedBy
# = [ "sockets.target" ]`), so nothing here defines a podman unit.
#
# The seed's path /run/flashpods/podman.sock stays as a symlink to that socket (for
# operators and scripts); the units themselves use the real path (the SPIRE agent's
# docker_socket_path, the API's FLASHPODS_PODMAN_SOCKET).
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
  socket = "/run/user/${toString cfg.uid}/podman/podman.sock";
  # Run podman as the flashpods user against its own API service, so pulls and loads land
  # in the same (rootless) storage the jobs use.
  remote = "${podman}/bin/podman --url unix://${cfg.podman.socket}";
  inherit (cfg.podman) userManager;
in
{
  imports = [ ./common.nix ];

  options.services.flashpods.podman = {
    socket = mkOption {
      type = types.str;
      default = socket;
      readOnly = true;
      description = "The flashpods user's podman API socket (its own podman.socket).";
    };

    userManager = mkOption {
      type = types.str;
      default = "user@${toString cfg.uid}.service";
      readOnly = true;
      description = ''
        The flashpods user's systemd manager. It reports ready once its sockets.target is
        reached, so units ordered after it find the podman socket listening.
      '';
    };

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

    # The seed's path, for operators: a symlink to the user's socket.
    systemd.tmpfiles.rules = [
      "L+ ${data.apiEnvironment.FLASHPODS_PODMAN_SOCKET} - - - - ${cfg.podman.socket}"
    ];

    systemd.services.flashpods-image-load = lib.mkIf (cfg.podman.preloadImages != [ ]) {
      description = "Load Flashpods job images into rootless podman";
      after = [ userManager ];
      requires = [ userManager ];
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
        userManager
      ];
      requires = [ userManager ];
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
