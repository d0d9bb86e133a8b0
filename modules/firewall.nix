# The trust boundary: only the laptop, over WireGuard, reaches the API and rsync; job
# containers never do, whatever their network mode.
#
# Two tables see every packet on the input hook. NixOS's own `nixos-fw` drops what
# networking.firewall does not allow, so 8080/873 are opened there for the WireGuard
# interface only. Our `flashpods` table (modules/data/firewall.nft, shared with the lab)
# then drops those ports from everywhere but the laptop's address on that interface: an
# `accept` in one base chain does not override a `drop` in another, so both must agree.
{ config, lib, ... }:

let
  render = import ./lib/render.nix;
  inherit (render) data;
  cfg = config.services.flashpods;
  wg = cfg.wireguard;
in
{
  imports = [ ./common.nix ];

  config = lib.mkIf cfg.enable {
    networking.nftables.enable = true;

    networking.firewall = {
      enable = true;
      allowedUDPPorts = [ wg.listenPort ];
      interfaces.${wg.interface}.allowedTCPPorts = [
        cfg.api.port
        data.rsync.port
      ];
    };

    networking.nftables.tables.flashpods = {
      family = "inet";
      # The substitution services/flashpods/deployment.py performs for the lab.
      content = render.firewallTable {
        inherit (wg) interface laptopAddress;
        apiPort = cfg.api.port;
        jobUid = cfg.uid;
      };
    };
  };
}
