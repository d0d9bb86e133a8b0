# WireGuard, who reaches the API and rsync (laptop over wg0 only), what job containers
# reach (the internet, never the API or rsync), the seed's modes and owners, and the
# systemd-analyze security exposure of the two Flashpods services.
{ pkgs, self }:

pkgs.testers.runNixOSTest {
  name = "flashpods-network";
  imports = [ (import ./nodes.nix { inherit self; }) ];
  testScript = builtins.readFile ./network.py;
}
