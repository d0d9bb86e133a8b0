# Evaluate the Flashpods NixOS modules WITHOUT nixpkgs, with a small stand-in for nixpkgs'
# `lib` (only the functions the modules call) and for `pkgs` (derivations are fake store
# paths), plus a miniature module system: imports (each file once), option defaults,
# `mkIf` pushed down to the leaves as the real one does, `mkDefault` priorities, lists
# concatenated, conflicting definitions rejected.
#
# It checks the modules' own logic — every option they read exists, every unit and
# setting they produce evaluates — and gives tests/nix the configuration they generate,
# to compare with the lab's values. It does not check nixpkgs' option types or anything
# nixpkgs' modules do with these settings: that is `nix flake check` (vm-tests/).
#
#   nix-instantiate --eval --strict --json --expr 'import ./tests/nix/eval-modules.nix { }'
{
  # Extra definitions, e.g. { services.flashpods.hostCapacity.cpus = 4; }.
  settings ? { },
}:

let
  inherit (builtins)
    attrNames
    concatLists
    concatStringsSep
    filter
    foldl'
    genericClosure
    head
    isAttrs
    isFunction
    isList
    length
    listToAttrs
    map
    replaceStrings
    stringLength
    substring
    ;

  # --- lib: the part of nixpkgs' lib the modules use ----------------------------------

  lib = rec {
    mkOption = attrs: { _type = "option"; } // attrs;
    mkEnableOption = name: mkOption {
      default = false;
      description = "Whether to enable ${name}.";
    };
    mkIf = cond: content: {
      _type = "if";
      inherit cond content;
    };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkDefault = mkOverride 1000;
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    types = {
      str = "str";
      bool = "bool";
      port = "port";
      package = "package";
      enum = values: "enum";
      nullOr = type: type;
      listOf = type: type;
      attrsOf = type: type;
      ints = {
        positive = "int";
        between = low: high: "int";
      };
    };
    optional = cond: value: if cond then [ value ] else [ ];
    optionalAttrs = cond: value: if cond then value else { };
    optionalString = cond: value: if cond then value else "";
    hasPrefix = prefix: text: substring 0 (stringLength prefix) text == prefix;
    removePrefix =
      prefix: text:
      if hasPrefix prefix text then
        substring (stringLength prefix) (stringLength text - stringLength prefix) text
      else
        text;
    versionAtLeast = v1: v2: builtins.compareVersions v1 v2 >= 0;
    versions.majorMinor =
      version:
      let
        parts = builtins.splitVersion version;
      in
      concatStringsSep "." [
        (builtins.elemAt parts 0)
        (builtins.elemAt parts 1)
      ];
    concatMapStrings = f: list: concatStringsSep "" (map f list);
    concatLines = list: concatStringsSep "" (map (line: line + "\n") list);
    escapeShellArg = arg: "'${replaceStrings [ "'" ] [ "'\\''" ] arg}'";
    fileContents =
      path:
      let
        text = builtins.readFile path;
      in
      if substring (stringLength text - 1) 1 text == "\n" then
        substring 0 (stringLength text - 1) text
      else
        text;
  };

  # --- pkgs: fake derivations --------------------------------------------------------

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  pkgs = {
    callPackage = fn: _args: fakeDrv (replaceStrings [ ".nix" ] [ "" ] (baseNameOf (toString fn)));
    writeText = name: _text: fakeDrv name;
    coreutils = fakeDrv "coreutils";
    spire = fakeDrv "spire" // {
      version = "1.9.6"; # nixos-24.05's: the flake replaces it (spireFromFlake below)
    };
  };

  # What nixpkgs' own modules would provide that ours read.
  nixosStandIn = {
    config = {
      systemd.package = fakeDrv "systemd";
      virtualisation.podman.package = fakeDrv "podman-wrapped";
      users.users.flashpods.home = "/home/flashpods";
      environment.etc."spire/server.conf".source = "/etc/static/spire/server.conf";
      environment.etc."spire/agent.conf".source = "/etc/static/spire/agent.conf";
    };
  };
  # flake.nix's pin of SPIRE (nixpkgs-recent).
  spireFromFlake = {
    services.flashpods.spire.package = lib.mkDefault (
      fakeDrv "spire"
      // {
        version = "1.13.3";
      }
    );
  };

  # --- the module system in miniature ------------------------------------------------

  # A plain set of definitions (not a derivation, not an mkIf/override/absent wrapper).
  isStructural = v: isAttrs v && !(v ? outPath) && !(v ? _type);
  absent = {
    _type = "absent";
  };

  args = {
    inherit lib pkgs config;
  };
  load = module: if isFunction module then module args else module;
  loadPath = path: load (import path);

  # Every module reachable through `imports`, each file once (as the real system does).
  roots = [
    ../../configuration.nix
    ../../modules/wireguard.nix
    ../../modules/firewall.nix
    ../../modules/podman.nix
    ../../modules/rsyncd.nix
    ../../modules/spire.nix
    ../../modules/flashpods-api.nix
    ../../modules/token-service.nix
  ];
  files = genericClosure {
    startSet = map (path: {
      key = toString path;
      inherit path;
    }) roots;
    operator =
      item:
      map (path: {
        key = toString path;
        inherit path;
      }) ((loadPath item.path).imports or [ ]);
  };
  loaded = map (item: loadPath item.path) files ++ [
    nixosStandIn
    spireFromFlake
    { config = settings; }
  ];

  configOf =
    m:
    if m ? config || m ? options then
      m.config or { }
    else
      removeAttrs m [
        "imports"
        "meta"
      ];

  # Option defaults as lowest-priority definitions.
  defaultsOf =
    options:
    if options ? _type && options._type == "option" then
      (if options ? default then lib.mkOverride 1500 options.default else absent)
    else
      builtins.mapAttrs (_: defaultsOf) options;

  # `mkIf c { a = x; }` → `{ a = mkIf c x; }` (and the same for overrides), so the keys
  # of a set never depend on a condition: no infinite recursion through `config`.
  pushDown =
    def:
    if isAttrs def && def ? _type && def._type == "if" && isStructural def.content then
      builtins.mapAttrs (_: lib.mkIf def.cond) (pushDown def.content)
    else if
      isAttrs def && def ? _type && def._type == "override" && isStructural def.content
    then
      builtins.mapAttrs (_: lib.mkOverride def.priority) (pushDown def.content)
    else
      def;

  # A leaf definition → { priority, value } or null when its condition is false.
  resolve =
    priority: def:
    if isAttrs def && def ? _type && def._type == "if" then
      (if def.cond then resolve priority def.content else null)
    else if isAttrs def && def ? _type && def._type == "override" then
      resolve def.priority def.content
    else if isAttrs def && def ? _type && def._type == "absent" then
      null
    else
      {
        inherit priority;
        value = def;
      };

  mergeLeaves =
    path: defs:
    let
      resolved = filter (d: d != null) (map (resolve 100) defs);
      best = foldl' (low: d: if d.priority < low then d.priority else low) 9999 resolved;
      winners = map (d: d.value) (filter (d: d.priority == best) resolved);
    in
    if winners == [ ] then
      absent
    else if isList (head winners) then
      concatLists winners
    else if length (builtins.attrNames (listToAttrs (map (v: {
      name = builtins.toJSON v;
      value = null;
    }) winners))) == 1 then
      head winners
    else
      throw "conflicting definitions of ${concatStringsSep "." path}: ${builtins.toJSON winners}";

  merge =
    path: defs:
    let
      pushed = map pushDown defs;
      structural = filter isStructural pushed;
    in
    if structural != [ ] && length structural == length pushed then
      let
        keys = attrNames (foldl' (acc: d: acc // d) { } structural);
      in
      listToAttrs (
        map (key: {
          name = key;
          value = merge (path ++ [ key ]) (concatLists (map (d: if d ? ${key} then [ d.${key} ] else [ ]) structural));
        }) keys
      )
    else if structural != [ ] then
      # A set defined next to a leaf default (e.g. extraEnvironment = { } by default).
      merge path (map (d: if isStructural d then d else leafToSet d) pushed)
    else
      mergeLeaves path pushed;

  # A leaf whose value is a plain set, as a set of leaves with the same priority.
  leafToSet =
    def:
    let
      r = resolve 100 def;
    in
    if r == null || !(isStructural r.value) then
      { }
    else
      builtins.mapAttrs (_: lib.mkOverride r.priority) r.value;

  config = merge [ ] (map (m: defaultsOf (m.options or { })) loaded ++ map configOf loaded);

  # JSON-friendly: drop absent leaves and fake derivations' internals.
  clean =
    value:
    if isAttrs value && value ? outPath then
      value.outPath
    else if isAttrs value && value ? _type && value._type == "absent" then
      null
    else if isAttrs value && value ? _type && value._type == "literalExpression" then
      value.text
    else if isAttrs value then
      let
        isAbsent = key: isAttrs value.${key} && (value.${key}._type or null) == "absent";
      in
      builtins.mapAttrs (_: clean) (removeAttrs value (filter isAbsent (attrNames value)))
    else if isList value then
      map clean value
    else if isFunction value then
      "<function>"
    else
      value;

  listOf = name: if isList (config.${name} or [ ]) then config.${name} or [ ] else [ ];
  failedAssertions = map (a: a.message) (filter (a: !a.assertion) (listOf "assertions"));
in
{
  inherit failedAssertions;
  warnings = listOf "warnings";
  # Everything the modules define, with fake store paths for packages.
  config = clean (removeAttrs config [ "assertions" ]);
}
