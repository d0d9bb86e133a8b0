# WireGuard between the laptop and the host (seed: wg0, 10.0.0.1/24, UDP 51820, one peer).
{ config, lib, ... }:

let
  inherit (lib) mkOption types;
  inherit (import ./lib/render.nix) data;
  cfg = config.services.flashpods;
  wg = cfg.wireguard;
in
{
  imports = [ ./common.nix ];

  options.services.flashpods.wireguard = {
    privateKeyFile = mkOption {
      type = types.str;
      default = "/etc/wireguard/private.key";
      description = ''
        The host's WireGuard private key (`wg genkey`), root-only, outside the Nix store.
        Created on first boot if missing (`generatePrivateKeyFile`); read its public key
        with `wg pubkey < FILE` for the laptop's configuration.
      '';
    };

    laptopPublicKey = mkOption {
      type = types.str;
      example = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
      description = "The laptop's WireGuard public key (`wg pubkey < laptop.key`).";
    };

    laptopEndpoint = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "192.0.2.10:${toString data.wireguard.listenPort}";
      description = "Optional fixed endpoint of the laptop; null lets the laptop connect in.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !(lib.hasPrefix builtins.storeDir wg.privateKeyFile);
        message = "services.flashpods.wireguard.privateKeyFile must not be in the Nix store.";
      }
    ];

    networking.wireguard.interfaces.${wg.interface} = {
      ips = [ "${wg.hostAddress}/${toString wg.prefixLength}" ];
      inherit (wg) listenPort privateKeyFile;
      generatePrivateKeyFile = true;
      peers = [
        {
          publicKey = wg.laptopPublicKey;
          allowedIPs = [ "${wg.laptopAddress}/32" ];
          endpoint = wg.laptopEndpoint;
        }
      ];
    };
  };
}
