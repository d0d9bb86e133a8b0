# The Flashpods host: "enable + keys". Everything else has the seed's values as option
# defaults (modules/*.nix, values in modules/data/flashpods.nix). See docs/deploy.md.
{ lib, ... }:

let
  # Public key of the laptop (`wg pubkey < laptop.key > laptop.pub`, then `git add
  # laptop.pub`: a flake only sees files git tracks). Public keys are not secrets.
  laptopPub = ./laptop.pub;
  placeholderKey = "YOUR_LAPTOP_PUBLIC_KEY";
  laptopPublicKey = if builtins.pathExists laptopPub then lib.fileContents laptopPub else placeholderKey;
in
{
  # The machine's own hardware configuration (copy /etc/nixos/hardware-configuration.nix
  # next to this file and `git add` it). Without it the fallbacks below keep the flake
  # evaluable for `nix flake check`.
  imports = lib.optional (builtins.pathExists ./hardware-configuration.nix) ./hardware-configuration.nix;

  services.flashpods = {
    enable = true;
    wireguard.laptopPublicKey = laptopPublicKey;
    # Secrets stay outside the Nix store; these are the defaults, shown for clarity:
    #   wireguard.privateKeyFile = "/etc/wireguard/private.key";
    #   api.tokenFile = "/etc/flashpods/api-token";
    #   secretsFile = "/etc/flashpods/secrets.json";
  };

  warnings = lib.optional (laptopPublicKey == placeholderKey) ''
    Flashpods: no laptop.pub next to configuration.nix; WireGuard will reject the
    placeholder peer key. See docs/deploy.md, step 2.
  '';

  networking.hostName = lib.mkDefault "flashpods";
  services.openssh.enable = lib.mkDefault true;

  # Fallbacks for evaluation without hardware-configuration.nix (the installer's labels).
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  boot.loader.grub.device = lib.mkDefault "nodev";

  system.stateVersion = "24.05";
}
