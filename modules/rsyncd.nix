# The rsync daemon: module `uploads` for the laptop's folders. Its settings are the shared
# data's `rsyncd` attribute (nixos-24.05 shape: `global` becomes [global]); the lab renders
# the same attribute set into its rsyncd.conf.
#
# rsync ignores `address` (and `port`) under the [global] header nixpkgs writes: it reads
# those daemon parameters in a pass that stops at the first section header (rsync
# params.c, Parse()), so it listens on every address, port 873
# (tests/nix/test_nix_rsyncd.py runs it). The firewall (firewall.nix) and `hosts allow`
# carry the restriction; and since it binds no tunnel address, it needs no ordering on
# wg0.
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

    # nixos-24.05 names the daemon's unit `rsync` (nixos/modules/services/network-filesystems/
    # rsyncd.nix: systemd.services.rsync, ExecStart rsync --daemon --no-detach).
    systemd.services.rsync = {
      requires = [ "flashpods-paths.service" ];
      after = [ "flashpods-paths.service" ];
      # nixpkgs' unit sets RestartSec = 1 but no Restart= (rsyncd.nix), so a crashed
      # daemon would stay down.
      serviceConfig.Restart = "on-failure";
      # RLIMIT_FSIZE (systemd.exec(5) LimitFSIZE=, bytes): no uploaded file grows past the
      # upload limit while rsync writes it; the lab runs rsyncd under `prlimit --fsize`.
      serviceConfig.LimitFSIZE = data.rsync.maxFileBytes;
      # The module's `pre-xfer exec` (flashpods-rsync-watch, the upload's total while
      # rsync writes) is found on the unit's PATH (systemd-unit-options.nix `path`). It
      # runs as the daemon's root, outside the chroot: nixpkgs' unit sets ProtectSystem=
      # full, PrivateDevices, NoNewPrivileges and no capability bounds, so it can read
      # /proc/<pid>/io of the transfer's processes and kill them (CAP_SYS_PTRACE, CAP_KILL).
      path = [ cfg.package ];
    };
  };
}
