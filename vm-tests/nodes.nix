# The three machines of the Flashpods VM tests (a test module for pkgs.testers.runNixOSTest):
#   host      the Flashpods host, configured only through services.flashpods.*
#   laptop    the WireGuard peer that uploads folders and calls the API
#   internet  a web server standing in for the internet (job containers must reach it)
# Nodes get eth1 = 192.168.1.x in sorted name order. Keys and secrets are committed test
# fixtures (fixtures/README.md). No network in the sandbox: the job image is built with
# dockerTools and loaded with `podman load` (services.flashpods.podman.preloadImages).
{ self }:
{ lib, ... }:

let
  data = import ../modules/data/flashpods.nix;
  wg = data.wireguard;
in
{
  defaults = {
    virtualisation.cores = 2;
  };

  nodes = {
    host =
      { pkgs, ... }:
      let
        jobImage = pkgs.dockerTools.buildImage {
          name = "localhost/flashpods-job";
          tag = "latest";
          copyToRoot = pkgs.buildEnv {
            name = "flashpods-job-root";
            paths = with pkgs; [
              bashInteractive
              coreutils
              curl
              jq
              git
              cacert
            ];
            pathsToLink = [
              "/bin"
              "/etc"
            ];
          };
          extraCommands = ''
            mkdir -p tmp work artifacts
            chmod 1777 tmp
          '';
          config.Cmd = [ "/bin/sh" ];
        };
      in
      {
        imports = [ self.nixosModules.default ];

        virtualisation = {
          memorySize = 3072;
          diskSize = 4096;
        };

        services.flashpods = {
          enable = true;
          wireguard.laptopPublicKey = lib.fileContents ./fixtures/laptop.pub;
          # What admission hands out (a worker defaults to 2 CPUs / 4 GB; the tests ask
          # for 1 / 1 and never run two jobs at once).
          hostCapacity = {
            cpus = 2;
            memoryGb = 4;
          };
          api = {
            defaultImage = "localhost/flashpods-job:latest";
            pullPolicy = "never";
          };
          podman = {
            prePullImages = [ ];
            preloadImages = [ jobImage ];
          };
        };

        # Test fixtures stand in for what an operator installs by hand (docs/deploy.md).
        environment.etc = {
          "wireguard/private.key" = {
            source = ./fixtures/host.key;
            mode = "0400";
          };
          "flashpods/api-token" = {
            source = ./fixtures/api-token;
            mode = "0600";
          };
          "flashpods/secrets.json" = {
            source = ./fixtures/secrets.json;
            mode = "0600";
          };
          # The shared data, so the test script asserts against the same values.
          "flashpods-test/deployment.json".text = builtins.toJSON data;
          # systemd-analyze security limits (tests/nix/test_nix_security.py measures them).
          "flashpods-test/security-limits.json".source = ./security-limits.json;
          "flashpods-test/secrets.json".source = ./fixtures/secrets.json;
        };

        environment.systemPackages = with pkgs; [
          curl
          jq
          rsync
          wireguard-tools
        ];
      };

    laptop =
      { nodes, pkgs, ... }:
      {
        networking.firewall.allowedUDPPorts = [ wg.listenPort ];
        networking.wireguard.interfaces.${wg.interface} = {
          ips = [ "${wg.laptopAddress}/${toString wg.prefixLength}" ];
          inherit (wg) listenPort;
          privateKeyFile = "/etc/wireguard/private.key";
          peers = [
            {
              publicKey = lib.fileContents ./fixtures/host.pub;
              allowedIPs = [ "${wg.hostAddress}/32" ];
              endpoint = "${nodes.host.networking.primaryIPAddress}:${toString wg.listenPort}";
              persistentKeepalive = 5;
            }
          ];
        };
        environment.etc."wireguard/private.key" = {
          source = ./fixtures/laptop.key;
          mode = "0400";
        };
        environment.etc."flashpods-test/api-token".source = ./fixtures/api-token;
        environment.systemPackages = [
          pkgs.curl
          pkgs.jq
          pkgs.rsync
          self.packages.${pkgs.system}.flashpods
        ];
      };

    internet =
      { pkgs, ... }:
      {
        environment.systemPackages = [
          pkgs.curl
          pkgs.rsync
        ];
        services.nginx = {
          enable = true;
          virtualHosts.default = {
            default = true;
            locations."/".return = "200 'internet-ok'";
          };
        };
        networking.firewall.allowedTCPPorts = [ 80 ];
      };
  };
}
