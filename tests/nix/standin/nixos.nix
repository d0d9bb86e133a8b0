# The nixpkgs (nixos-24.05) options the Flashpods modules and configuration.nix set or read,
# declared as nixpkgs declares them (the type, the default, and what nixpkgs' own modules
# define for the same options where ours add to them). Each group names the nixpkgs file
# it is taken from. Only these options exist for the stand-in: setting anything else fails
# ("does not exist"), as a typo or a removed option would in nixpkgs.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption mkIf mkDefault types;
  opt = type: default: mkOption { inherit type default; };
  required = type: mkOption { inherit type; };

  # nixos/lib/systemd-lib.nix: unitNameType.
  unitName = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";
  units = opt (types.listOf unitName) [ ];

  # nixos/lib/systemd-unit-options.nix, unitOption: lists are concatenated (all definitions
  # lists), anything else must be equal in every definition.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      if builtins.isList (builtins.head defs).value then
        (
          if builtins.all (def: builtins.isList def.value) defs then
            builtins.concatLists (map (def: def.value) defs)
          else
            abort "The definitions for systemd unit options should be either all lists or all non-lists: ${lib.showOption loc}"
        )
      else
        lib.mergeEqualOption loc defs;
  };
  # nixos/lib/systemd-unit-options.nix, checkService (nixos-24.05 adds notify-reload).
  checkService =
    attrs:
    let
      oneOf =
        name: values:
        !(attrs ? ${name}) || builtins.elem (attrs.${name}.content or attrs.${name}) values;
    in
    oneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ]
    && oneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ];

  # nixos/lib/systemd-unit-options.nix: sharedOptions + commonUnitOptions +
  # stage2CommonUnitOptions.
  commonUnitOptions = {
    enable = opt types.bool true;
    description = opt types.singleLineStr "";
    documentation = opt (types.listOf types.str) [ ];
    wantedBy = units;
    requiredBy = units;
    aliases = units;
    requires = units;
    wants = units;
    after = units;
    before = units;
    bindsTo = units;
    partOf = units;
    conflicts = units;
    requisite = units;
    onFailure = units;
    unitConfig = opt (types.attrsOf unitOption) { };
    startLimitBurst = required types.int;
    startLimitIntervalSec = required types.int;
    restartTriggers = opt (types.listOf types.unspecified) [ ];
    reloadTriggers = opt (types.listOf unitOption) [ ];
  };

  # nixos/lib/systemd-unit-options.nix: serviceOptions + stage2ServiceOptions. `script`
  # becomes ExecStart (so a unit with both is a conflict, as in nixpkgs).
  serviceModule =
    { name, config, ... }:
    {
      options = commonUnitOptions // {
        environment = opt (types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        )) { };
        path = opt (types.listOf (
          types.oneOf [
            types.package
            types.str
          ]
        )) [ ];
        serviceConfig = opt (lib.types.attrsOf unitOption // {
          check = x: builtins.isAttrs x && checkService x;
        }) { };
        script = opt types.lines "";
        scriptArgs = opt types.str "";
        preStart = opt types.lines "";
        postStart = opt types.lines "";
        reload = opt types.lines "";
        preStop = opt types.lines "";
        postStop = opt types.lines "";
        restartIfChanged = opt types.bool true;
        reloadIfChanged = opt types.bool false;
        stopIfChanged = opt types.bool true;
        startAt = opt (types.either types.str (types.listOf types.str)) [ ];
      };
      config = lib.mkMerge [
        (mkIf (config.script != "") {
          serviceConfig.ExecStart = "${pkgs.writeText "${name}-start" config.script} ${config.scriptArgs}";
        })
        (mkIf (config.preStart != "") {
          serviceConfig.ExecStartPre = [ "${pkgs.writeText "${name}-pre-start" config.preStart}" ];
        })
      ];
    };

  # nixos/lib/systemd-unit-options.nix: socketOptions.
  socketModule = {
    options = commonUnitOptions // {
      listenStreams = opt (types.listOf types.str) [ ];
      listenDatagrams = opt (types.listOf types.str) [ ];
      socketConfig = opt (types.attrsOf unitOption) { };
    };
  };

  # nixos/modules/services/networking/firewall.nix: commonOptions; the port lists are
  # sorted and deduplicated (apply = canonicalizePortList).
  canonicalizePortList = ports: lib.unique (builtins.sort builtins.lessThan ports);
  firewallPorts = mkOption {
    type = types.listOf types.port;
    default = [ ];
    apply = canonicalizePortList;
  };
  firewallCommon = {
    allowedTCPPorts = firewallPorts;
    allowedUDPPorts = firewallPorts;
  };

  # pkgs/pkgs-lib/formats.nix: (pkgs.formats.ini { }).type.
  iniType = types.attrsOf (
    types.attrsOf (
      types.nullOr (
        types.oneOf [
          types.bool
          types.int
          types.float
          types.str
        ]
      )
    )
  );
in
{
  options = {
    # nixos/modules/misc/assertions.nix
    assertions = opt (types.listOf types.unspecified) [ ];
    warnings = opt (types.listOf types.str) [ ];

    # nixos/modules/system/boot/systemd.nix (services, sockets, package) and
    # nixos/modules/system/boot/systemd/user.nix (user units).
    systemd = {
      package = opt types.package (pkgs.systemd);
      services = opt (types.attrsOf (types.submodule serviceModule)) { };
      sockets = opt (types.attrsOf (types.submodule socketModule)) { };
      user = {
        services = opt (types.attrsOf (types.submodule serviceModule)) { };
        sockets = opt (types.attrsOf (types.submodule socketModule)) { };
      };
      # nixos/modules/system/boot/systemd/tmpfiles.nix
      tmpfiles.rules = opt (types.listOf types.str) [ ];
    };

    # nixos/modules/config/users-groups.nix (userOpts, groupOpts).
    users = {
      users = opt (types.attrsOf (
        types.submodule (
          { name, config, ... }:
          {
            options = {
              name = opt (types.passwdEntry types.str) name;
              uid = opt (types.nullOr types.int) null;
              isNormalUser = opt types.bool false;
              isSystemUser = opt types.bool false;
              group = opt types.str "";
              extraGroups = opt (types.listOf types.str) [ ];
              description = opt (types.passwdEntry types.str) "";
              home = opt (types.passwdEntry types.path) "/var/empty";
              createHome = opt types.bool false;
              # 24.05: bool, default false (added in 24.05; later releases made it
              # nullOr bool, default null, with users.manageLingering). `true` is valid in
              # both.
              linger = opt types.bool false;
            };
            config = mkIf config.isNormalUser {
              group = mkDefault "users";
              createHome = mkDefault true;
              home = mkDefault "/home/${config.name}";
              isSystemUser = mkDefault false;
            };
          }
        )
      )) { };
      groups = opt (types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              name = opt (types.passwdEntry types.str) name;
              gid = opt (types.nullOr types.int) null;
              members = opt (types.listOf (types.passwdEntry types.str)) [ ];
            };
          }
        )
      )) { };
    };

    networking = {
      # nixos/modules/tasks/network-interfaces.nix
      hostName = opt (types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$") "nixos";

      # nixos/modules/services/networking/nftables.nix (tableSubmodule).
      nftables = {
        enable = opt types.bool false;
        tables = opt (types.attrsOf (
          types.submodule (
            { name, ... }:
            {
              options = {
                enable = opt types.bool true;
                name = opt types.str name;
                family = required (
                  types.enum [
                    "ip"
                    "ip6"
                    "inet"
                    "arp"
                    "bridge"
                    "netdev"
                  ]
                );
                content = opt types.lines "";
              };
            }
          )
        )) { };
      };

      # nixos/modules/services/networking/firewall.nix
      firewall = firewallCommon // {
        enable = opt types.bool true;
        interfaces = opt (types.attrsOf (types.submodule { options = firewallCommon; })) { };
      };

      # nixos/modules/services/networking/wireguard.nix (interfaceOpts, peerOpts).
      wireguard.interfaces = opt (types.attrsOf (
        types.submodule {
          options = {
            ips = opt (types.listOf types.str) [ ];
            privateKey = opt (types.nullOr types.str) null;
            privateKeyFile = opt (types.nullOr types.str) null;
            generatePrivateKeyFile = opt types.bool false;
            listenPort = opt (types.nullOr types.int) null;
            peers = opt (types.listOf (
              types.submodule {
                options = {
                  publicKey = required types.singleLineStr;
                  presharedKeyFile = opt (types.nullOr types.str) null;
                  allowedIPs = opt (types.listOf types.str) [ ];
                  endpoint = opt (types.nullOr types.str) null;
                  persistentKeepalive = opt (types.nullOr types.int) null;
                };
              }
            )) [ ];
          };
        }
      )) { };
    };

    services = {
      # nixos/modules/services/network-filesystems/rsyncd.nix
      rsyncd = {
        enable = opt types.bool false;
        port = opt types.port 873;
        settings = opt iniType { };
        socketActivated = opt types.bool false;
      };
      # nixos/modules/services/networking/ssh/sshd.nix
      openssh.enable = opt types.bool false;
    };

    virtualisation = {
      # nixos/modules/virtualisation/qemu-vm.nix (the VM tests' nodes).
      cores = opt types.ints.positive 1;
      memorySize = opt types.ints.positive 1024;
      diskSize = opt (types.nullOr types.ints.positive) 1024;
      # nixos/modules/virtualisation/podman/default.nix (package: internal, the wrapped
      # podman).
      podman = {
        enable = opt types.bool false;
        dockerCompat = opt types.bool false;
        package = opt types.package (pkgs.podman);
      };
    };

    environment = {
      # nixos/modules/config/system-path.nix
      systemPackages = opt (types.listOf types.package) [ ];
      # nixos/modules/system/etc/etc.nix: `source` defaults to a store file of `text`.
      etc = opt (types.attrsOf (
        types.submodule (
          { name, config, ... }:
          {
            options = {
              enable = opt types.bool true;
              target = opt types.str name;
              text = opt (types.nullOr types.lines) null;
              source = required types.path;
              mode = opt types.str "symlink";
              user = opt types.str "+0";
              group = opt types.str "+0";
            };
            config.source = mkIf (config.text != null) (
              mkDefault (pkgs.writeText "etc-${baseNameOf name}" config.text)
            );
          }
        )
      )) { };
    };

    # nixos/modules/tasks/filesystems.nix (fileSystemOpts).
    fileSystems = opt (types.attrsOf (
      types.submodule {
        options = {
          device = opt (types.nullOr types.nonEmptyStr) null;
          fsType = opt types.nonEmptyStr "auto";
        };
      }
    )) { };
    # nixos/modules/system/boot/loader/grub/grub.nix
    boot.loader.grub.device = opt types.str "";
    # nixos/modules/misc/version.nix
    system.stateVersion = required types.str;
  };

  # What nixpkgs' own modules define for options ours define too (so a clash shows).
  config = lib.mkMerge [
    # nixos/modules/services/network-filesystems/rsyncd.nix (socketActivated = false).
    (mkIf config.services.rsyncd.enable {
      services.rsyncd.settings.global.port = toString config.services.rsyncd.port;
      systemd.services.rsync = {
        enable = !config.services.rsyncd.socketActivated;
        aliases = [ "rsyncd.service" ];
        description = "fast remote file copy program daemon";
        after = [ "network.target" ];
        documentation = [
          "man:rsync(1)"
          "man:rsyncd.conf(5)"
        ];
        serviceConfig = {
          ProtectSystem = "full";
          PrivateDevices = "on";
          NoNewPrivileges = "on";
          ExecStart = "${pkgs.rsync}/bin/rsync --daemon --no-detach --config=/nix/store/00000000000000000000000000000000-rsyncd.conf";
          RestartSec = 1;
        };
        wantedBy = [ "multi-user.target" ];
      };
    })
    # nixos/modules/virtualisation/podman/default.nix: every user's podman.socket (the
    # podman package's user unit, `ListenStream=%t/podman/podman.sock`) is enabled.
    (mkIf config.virtualisation.podman.enable {
      environment.systemPackages = [ config.virtualisation.podman.package ];
      systemd.user.sockets.podman.wantedBy = [ "sockets.target" ];
    })
  ];
}
