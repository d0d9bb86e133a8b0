# The token-exchange service: runs as root to read the secrets file, listens only on a unix
# socket. The socket belongs to a socket unit, so it exists with mode 0660
# flashpods:flashpods before the first connection (no chown race) and keeps its inode
# across restarts (job containers bind-mount the file).
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
  env = data.tokenServiceEnvironment;
in
{
  imports = [
    ./common.nix
    ./spire.nix
  ];

  config = lib.mkIf cfg.enable {
    systemd.sockets.flashpods-token-service = {
      description = "Flashpods Token Exchange Socket";
      wantedBy = [ "sockets.target" ];
      requires = [ "flashpods-paths.service" ];
      after = [ "flashpods-paths.service" ];
      listenStreams = [ env.FLASHPODS_SOCKET_PATH ];
      socketConfig = {
        SocketUser = data.user;
        SocketGroup = data.group;
        SocketMode = "0660";
        DirectoryMode = "0750";
        # Keep the file (and its inode) when the socket unit stops: containers mount it.
        RemoveOnStop = false;
      };
    };

    systemd.services.flashpods-token-service = {
      description = "Flashpods Token Exchange Service";
      after = [
        "network.target"
        "flashpods-paths.service"
        "flashpods-token-service.socket"
        "spire-agent.service"
      ];
      requires = [
        "flashpods-paths.service"
        "flashpods-token-service.socket"
        "spire-agent.service"
      ];
      wantedBy = [ "multi-user.target" ];

      environment = render.tokenServiceEnvironment {
        inherit (cfg) secretsFile logLevel;
      };

      serviceConfig = import ./lib/hardening.nix // {
        Type = "simple";
        ExecStart = "${cfg.package}/bin/flashpods-token-service";
        # systemd hands over the listening socket as fd 3 (LISTEN_FDS=1).
        Sockets = [ "flashpods-token-service.socket" ];
        # SIGHUP re-reads the secrets file (e.g. after rotating a key).
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "always";
        RestartSec = "5s";

        # Hardening beyond lib/hardening.nix. Root, but with no capabilities: reading a
        # root-owned 0600 file needs none. Only unix sockets are used (its own, passed in;
        # the SPIRE agent's).
        PrivateNetwork = true;
        ReadOnlyPaths = [
          (dirOf cfg.secretsFile)
          (dirOf env.FLASHPODS_SPIRE_SOCKET)
        ];
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        # Not "invisible": the service counts connections per job container and reads
        # the peer's /proc/<pid>/cgroup for it (tokens/callers.py); a root process without
        # CAP_SYS_PTRACE would not see other users' /proc entries under hidepid
        # (systemd.exec(5) ProtectProc=). /proc/<pid>/cgroup is 0444 and holds no secret.
        ProtectProc = "default";
        ProcSubset = "pid";
        RemoveIPC = true;
        RestrictAddressFamilies = [ "AF_UNIX" ];
        IPAddressDeny = "any";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
