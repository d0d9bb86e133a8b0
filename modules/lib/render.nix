# What the modules derive from the shared data (../data), as pure functions that need only
# builtins, no nixpkgs. The modules call them; tests/nix evaluates them with
# `nix-instantiate --eval --strict --json` and compares the results with what the lab
# renders from the same files (flashpods.deployment, flashpods.spire.config), so the two
# can never differ.
let
  data = import ../data/flashpods.nix;
  s = data.spire;

  lines = text: builtins.filter builtins.isString (builtins.split "\n" text);
  codeOf = line: builtins.head (builtins.split "#" line);
in
rec {
  inherit data;

  # Body of `table inet flashpods` with the @PLACEHOLDERS@ of firewall.nft filled.
  firewallTable =
    {
      interface ? data.wireguard.interface,
      laptopAddress ? data.wireguard.laptopAddress,
      apiPort ? data.api.port,
      rsyncPort ? data.rsync.port,
      jobUid ? data.uid,
      # The laptop's addresses besides its WireGuard one (v4 or v6): never reachable by a
      # job, not even on port 53 (the lab passes its end of the "internet" veth).
      laptopOtherAddresses ? [ ],
    }:
    let
      isV6 = address: builtins.match ".*:.*" address != null;
      otherV6 = builtins.filter isV6 laptopOtherAddresses;
      otherV4 = builtins.filter (address: !isV6 address) laptopOtherAddresses;
    in
    builtins.replaceStrings
      [
        "@WG_IFACE@"
        "@LAPTOP_ADDR@"
        "@API_PORT@"
        "@RSYNC_PORT@"
        "@JOB_UID@"
        "@EGRESS_DENY_V4@"
        "@LAPTOP_V4@"
        "@LAPTOP_V6_ELEMENTS@"
      ]
      [
        interface
        laptopAddress
        (toString apiPort)
        (toString rsyncPort)
        (toString jobUid)
        (builtins.concatStringsSep ", " data.egressDenyV4)
        (builtins.concatStringsSep ", " ([ laptopAddress ] ++ otherV4))
        # nft refuses `elements = { }`: no element, no line.
        (if otherV6 == [ ] then "" else "elements = { ${builtins.concatStringsSep ", " otherV6} }")
      ]
      (builtins.readFile ../data/firewall.nft);

  # Same names and values as flashpods.spire.config.SpireSettings.placeholders().
  spirePlaceholders = {
    "@TRUST_DOMAIN@" = s.trustDomain;
    "@SERVER_BIND_ADDRESS@" = s.serverBindAddress;
    "@SERVER_BIND_PORT@" = toString s.serverBindPort;
    "@SERVER_SOCKET_PATH@" = s.serverSocketPath;
    "@SERVER_DATA_DIR@" = s.serverDataDir;
    "@JWT_SVID_TTL@" = s.jwtSvidTtl;
    "@LOG_LEVEL@" = s.logLevel;
    "@AGENT_SOCKET_PATH@" = s.agentSocketPath;
    "@AGENT_DATA_DIR@" = s.agentDataDir;
    "@TRUST_BUNDLE_PATH@" = s.agentTrustBundlePath;
    "@JOIN_TOKEN_FILE@" = s.agentJoinTokenFile;
    "@PODMAN_SOCKET_URL@" = s.podmanSocketUrl;
  };

  # spire-server.conf / spire-agent.conf filled; a placeholder left outside a comment
  # fails the evaluation (as render_template fails in the lab). `overrides` replaces
  # placeholder values (the NixOS host's podman socket differs from the lab's).
  spireConfigWith =
    overrides: name:
    let
      values = spirePlaceholders // overrides;
      text =
        builtins.replaceStrings (builtins.attrNames values) (builtins.attrValues values)
          (builtins.readFile (../data + "/spire-${name}.conf"));
      leftover = builtins.filter (line: builtins.match ".*@.*" (codeOf line) != null) (lines text);
    in
    if leftover == [ ] then
      text
    else
      throw "spire-${name}.conf: unfilled placeholder in: ${builtins.concatStringsSep "; " leftover}";

  spireConfig = spireConfigWith { };

  # systemd-tmpfiles lines for the directories and operator-provided files of data.paths
  # ("socket" entries are created by their services; the tests check their modes).
  tmpfilesRules = map (entry: "${entry.kind} ${entry.path} ${entry.mode} ${entry.user} ${entry.group} -") (
    builtins.filter (entry: entry.kind == "d" || entry.kind == "f") data.paths
  );

  # flashpods-api.service's environment: the data's, plus what the module's options set.
  apiEnvironment =
    {
      listenAddress ? data.apiEnvironment.FLASHPODS_LISTEN_ADDR,
      tokenFile ? data.apiEnvironment.FLASHPODS_TOKEN_FILE,
      logLevel ? data.apiEnvironment.RUST_LOG,
      extra ? { },
    }:
    data.apiEnvironment
    // {
      FLASHPODS_LISTEN_ADDR = listenAddress;
      FLASHPODS_TOKEN_FILE = tokenFile;
      RUST_LOG = logLevel;
    }
    // extra;

  # flashpods-token-service.service's environment.
  tokenServiceEnvironment =
    {
      secretsFile ? data.tokenServiceEnvironment.FLASHPODS_SECRETS_FILE,
      logLevel ? data.tokenServiceEnvironment.RUST_LOG,
    }:
    data.tokenServiceEnvironment
    // {
      FLASHPODS_SECRETS_FILE = secretsFile;
      RUST_LOG = logLevel;
    };

  # services.rsyncd.settings.
  rsyncdSettings = data.rsyncd;
}
