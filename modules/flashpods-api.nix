# The Flashpods API: HTTP on the tunnel address, runs as the flashpods user, drives
# rootless podman through its API socket. The bearer token stays root-only on disk and
# reaches the service as the systemd credential `api-token`.
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
  api = cfg.api;
  env = data.apiEnvironment;

  environment = render.apiEnvironment {
    inherit (api) listenAddress tokenFile;
    inherit (cfg) logLevel;
    extra = {
      # The flashpods user's own podman socket (podman.nix).
      FLASHPODS_PODMAN_SOCKET = cfg.podman.socket;
      FLASHPODS_DEFAULT_IMAGE = api.defaultImage;
      FLASHPODS_PULL_POLICY = api.pullPolicy;
      FLASHPODS_AGENT_COMMAND = api.agentCommand;
    }
    // lib.optionalAttrs (api.modelBaseUrl != null) {
      FLASHPODS_MODEL_BASE_URL = api.modelBaseUrl;
    }
    // lib.optionalAttrs (api.toolsDir != null) { FLASHPODS_TOOLS_DIR = "${api.toolsDir}"; }
    // lib.optionalAttrs (cfg.hostCapacity.cpus != null) {
      FLASHPODS_HOST_CPUS = toString cfg.hostCapacity.cpus;
    }
    // lib.optionalAttrs (cfg.hostCapacity.memoryGb != null) {
      FLASHPODS_HOST_MEMORY_GB = toString cfg.hostCapacity.memoryGb;
    }
    // api.extraEnvironment;
  };

  # The only places the API writes: database, artifacts, logs, uploads (+ its snapshots).
  writablePaths = [
    (dirOf env.FLASHPODS_DB_PATH)
    env.FLASHPODS_ARTIFACTS_PATH
    env.FLASHPODS_LOGS_PATH
    (dirOf env.FLASHPODS_UPLOADS_PATH)
  ];
in
{
  imports = [
    ./common.nix
    ./podman.nix
  ];

  options.services.flashpods.api = {
    listenAddress = mkOption {
      type = types.str;
      default = "${cfg.wireguard.hostAddress}:${toString cfg.api.port}";
      defaultText = lib.literalExpression ''"''${wireguard.hostAddress}:''${toString api.port}" (${env.FLASHPODS_LISTEN_ADDR})'';
      description = "HOST:PORT the API binds (`FLASHPODS_LISTEN_ADDR`); only the tunnel address is reachable.";
    };

    tokenFile = mkOption {
      type = types.str;
      default = env.FLASHPODS_TOKEN_FILE;
      description = ''
        Bearer token file (64 hex characters, `openssl rand -hex 32`), root 0600, outside
        the Nix store. systemd passes it to the service as the credential `api-token`;
        the service user never reads this path.
      '';
    };

    defaultImage = mkOption {
      type = types.str;
      default = "ubuntu:22.04";
      description = "Image of jobs that name none (`FLASHPODS_DEFAULT_IMAGE`).";
    };

    pullPolicy = mkOption {
      type = types.enum [
        "always"
        "missing"
        "never"
        "newer"
      ];
      default = "missing";
      description = "podman `--pull` policy for job images (`FLASHPODS_PULL_POLICY`); `never` for offline hosts.";
    };

    agentCommand = mkOption {
      type = types.str;
      default = "claude";
      description = "Command the agent entrypoint runs in agent jobs (`FLASHPODS_AGENT_COMMAND`).";
    };

    modelBaseUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://llm-gateway.internal.example";
      description = ''
        Model service of agent jobs (`FLASHPODS_MODEL_BASE_URL`, the CLI's
        `ANTHROPIC_BASE_URL`); null: the Anthropic API. Its key comes only from the token
        service (secrets.json `anthropic_api_key`). Retries and timeout:
        `FLASHPODS_MODEL_MAX_RETRIES` / `FLASHPODS_MODEL_TIMEOUT_MS` in `extraEnvironment`.
      '';
    };

    toolsDir = mkOption {
      type = types.nullOr types.package;
      default = pkgs.callPackage ../nix/tools.nix { spire = cfg.spire.package; };
      defaultText = lib.literalExpression "pkgs.callPackage ./nix/tools.nix { spire = config.services.flashpods.spire.package; }";
      description = ''
        Directory mounted read-only at /opt/flashpods in job containers
        (`FLASHPODS_TOOLS_DIR`): a static `bin/spire-agent` and the container entrypoints.
      '';
    };

    extraEnvironment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        FLASHPODS_ARTIFACTS_TTL_SECONDS = "7200";
      };
      description = "More `FLASHPODS_*` settings (TTLs, quotas, rate limit; see docs/api.md). Never secrets.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !(lib.hasPrefix builtins.storeDir api.tokenFile);
        message = "services.flashpods.api.tokenFile must not be in the Nix store.";
      }
    ];

    systemd.services.flashpods-api = {
      description = "Flashpods API Server";
      # The listen address exists once the WireGuard interface is up.
      wants = [
        "network-online.target"
        "spire-agent.service"
      ];
      after = [
        "network-online.target"
        "wireguard-${cfg.wireguard.interface}.service"
        "flashpods-paths.service"
        cfg.podman.userManager
        "spire-agent.service"
      ];
      requires = [
        "flashpods-paths.service"
        cfg.podman.userManager
      ];
      wantedBy = [ "multi-user.target" ];
      inherit environment;
      # The podman CLI (remote client) the runtime adapter runs against the API socket;
      # coreutils' `sleep` holds each job's pinned /artifacts (docs/runtime.md "Artifacts").
      path = [
        config.virtualisation.podman.package
        pkgs.coreutils
      ];

      serviceConfig = import ./lib/hardening.nix // {
        Type = "simple";
        User = data.user;
        Group = data.group;
        ExecStart = "${cfg.package}/bin/flashpods-api";
        LoadCredential = [ "api-token:${api.tokenFile}" ];
        Restart = "always";
        RestartSec = "5s";
        # Jobs are containers of the podman service, not children of this unit, but the
        # holders of their pinned /artifacts are: stopping the API must touch neither
        # (crash recovery reattaches on start). systemd.kill(5): "If set to process, only
        # the main process itself is killed". The log capture processes end by themselves
        # when the API's pipe to them closes.
        KillMode = "process";

        # Hardening beyond lib/hardening.nix. /etc/flashpods stays unreadable: the token
        # comes as a credential.
        # read-only, not hidden: the podman client it runs looks up its user config, and
        # the podman socket is in /run/user (which ProtectHome= covers too).
        ProtectHome = "read-only";
        PrivateTmp = false; # the uploads live in /tmp/flashpods
        ReadWritePaths = writablePaths;
        InaccessiblePaths = [ "-${dirOf api.tokenFile}" ];
        ProtectProc = "invisible";
        ProcSubset = "pid";
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        # The podman CLI (Go) raises RLIMIT_NOFILE at start, so @resources stays allowed;
        # a denied call fails with EPERM instead of killing the process.
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
        # lib/hardening.nix's UMask 0077 stays: the database, snapshots, artifacts and logs
        # are the service user's alone (the service sets it itself as well).
      };
    };
  };
}
