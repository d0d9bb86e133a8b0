# SPIRE server and agent (no services.spire module exists in nixos-24.05), their configs
# rendered from the templates the lab renders too (data/spire-{server,agent}.conf), and
# the one-shot, idempotent bootstrap that issues the agent's join token and the
# registration entries (flashpods.spire.bootstrap, shared with the lab).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  render = import ./lib/render.nix;
  inherit (render) data;
  cfg = config.services.flashpods;
  s = data.spire;
  spire = cfg.spire.package;

  serverConf = "spire/server.conf";
  agentConf = "spire/agent.conf";

  # The bootstrap reads the deployment's values from this file instead of running
  # nix-instantiate on the host (flashpods.deployment.values()).
  deploymentJson = pkgs.writeText "flashpods-deployment.json" (builtins.toJSON data);

  commonHardening = import ./lib/hardening.nix;
in
{
  imports = [
    ./common.nix
    ./podman.nix
  ];

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.versionAtLeast spire.version (lib.versions.majorMinor s.version);
        message = "services.flashpods.spire.package must be SPIRE >= ${lib.versions.majorMinor s.version}, got ${spire.version}.";
      }
    ];

    # Rendered exactly as the lab renders them (flashpods.spire.config).
    environment.etc.${serverConf}.text = render.spireConfig "server";
    # The agent asks the flashpods user's own podman socket about containers (podman.nix).
    environment.etc.${agentConf}.text = render.spireConfigWith {
      "@PODMAN_SOCKET_URL@" = "unix://${cfg.podman.socket}";
    } "agent";
    environment.systemPackages = [ spire ];

    systemd.services.spire-server = {
      description = "SPIRE Server";
      after = [
        "network.target"
        "flashpods-paths.service"
      ];
      requires = [ "flashpods-paths.service" ];
      wantedBy = [ "multi-user.target" ];
      restartTriggers = [ config.environment.etc.${serverConf}.source ];
      serviceConfig = commonHardening // {
        Type = "simple";
        ExecStart = "${spire}/bin/spire-server run -config /etc/${serverConf}";
        Restart = "always";
        RestartSec = "5s";
        # The admin socket's directory: private, and not the one job containers mount.
        RuntimeDirectory = lib.removePrefix "/run/" (dirOf s.serverSocketPath);
        RuntimeDirectoryMode = "0700";
        ReadWritePaths = [ s.serverDataDir ];
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
      };
    };

    # Before every start of the agent: server healthy → trust bundle → join token only if
    # the agent cannot resume with its stored SVID → entries created or corrected.
    systemd.services.spire-bootstrap = {
      description = "SPIRE join token and registration entries for Flashpods";
      after = [
        "spire-server.service"
        "flashpods-paths.service"
      ];
      requires = [
        "spire-server.service"
        "flashpods-paths.service"
      ];
      before = [ "spire-agent.service" ];
      environment = {
        FLASHPODS_DEPLOYMENT_JSON = "${deploymentJson}";
        FLASHPODS_SPIRE_BIN_DIR = "${spire}/bin";
      };
      serviceConfig = commonHardening // {
        Type = "oneshot";
        ExecStart = "${cfg.package}/bin/flashpods-spire bootstrap --workload-uid ${toString cfg.uid}";
        ReadWritePaths = [ s.agentDataDir ];
        # The bootstrap talks to the server's admin socket only.
        RestrictAddressFamilies = [ "AF_UNIX" ];
        PrivateNetwork = true;
      };
    };

    # Root, in the host's PID namespace, no /proc hiding: workload attestation reads the
    # caller's /proc/<pid>/{cgroup,mountinfo} and asks podman's API about its container.
    systemd.services.spire-agent = {
      description = "SPIRE Agent";
      after = [
        "network.target"
        "flashpods-paths.service"
        "spire-server.service"
        "spire-bootstrap.service"
        cfg.podman.userManager
      ];
      requires = [
        "flashpods-paths.service"
        "spire-bootstrap.service"
        cfg.podman.userManager
      ];
      wantedBy = [ "multi-user.target" ];
      restartTriggers = [ config.environment.etc.${agentConf}.source ];
      serviceConfig = commonHardening // {
        Type = "simple";
        ExecStart = "${spire}/bin/spire-agent run -config /etc/${agentConf}";
        Restart = "always";
        RestartSec = "5s";
        SupplementaryGroups = [ data.group ];
        # The podman socket is in /run/user, which ProtectHome=true would hide.
        ProtectHome = "read-only";
        ReadWritePaths = [
          s.agentDataDir
          (dirOf s.agentSocketPath)
        ];
        # The Workload API socket is 0777 by design (system.md).
        UMask = "0022";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
      };
    };
  };
}
