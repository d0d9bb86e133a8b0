# The rsync daemon: module `uploads` for the laptop's folders. Its settings are the shared
# data's `rsyncd` attribute (nixos-24.05 shape: `global` becomes [global]); the lab renders
# the same attribute set into its rsyncd.conf.
#
# nixos-24.05 ignores `address` in [global], so rsync listens on every address: the
# firewall (firewall.nix) and `hosts allow` carry the restriction.
{ config, lib, ... }:

let
  render = import ./lib/render.nix;
  inherit (render) data;
  cfg = config.services.flashpods;
in
{
  imports = [ ./common.nix ];

  config = lib.mkIf cfg.enable {
    services.rsyncd = {
      enable = true;
      port = data.rsync.port;
      settings = render.rsyncdSettings;
    };

    systemd.services.rsync = {
      requires = [ "flashpods-paths.service" ];
      after = [ "flashpods-paths.service" ];
    };
  };
}
