# A stand-in for the part of nixpkgs' `lib` (nixos-24.05) the Flashpods modules use: the
# option types with nixpkgs' checks and merge functions (lib/types.nix, lib/options.nix),
# the properties mkIf/mkMerge/mkOverride (lib/modules.nix) and the few string and list
# helpers the modules call. No nixpkgs needed: Debian's nix 2.8 evaluates it.
#
# Errors that nixpkgs raises with `throw` (a wrong type, a unique option defined twice,
# conflicting values, an undeclared option) are `abort` here, so the JSON view of
# eval-modules.nix (which skips options nobody defined with tryEval) can never hide one.
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    genList
    head
    isAttrs
    isBool
    isFloat
    isFunction
    isInt
    isList
    isPath
    isString
    length
    listToAttrs
    map
    mapAttrs
    match
    replaceStrings
    stringLength
    substring
    tail
    toJSON
    typeOf
    ;

  showOption = loc: concatStringsSep "." loc;
  showValue =
    value:
    if isAttrs value && value ? outPath then
      "<derivation ${value.name or "?"}>"
    else if isFunction value then
      "<function>"
    else
      let
        tried = builtins.tryEval (toJSON value);
      in
      if tried.success then tried.value else "<${typeOf value}>";
  showDefs = defs: concatStringsSep "" (map (def: "\n- In `${def.file}': ${showValue def.value}") defs);
  fail = message: abort message;

  # lib/options.nix
  mergeEqualOption =
    loc: defs:
    if defs == [ ] then
      fail "mergeEqualOption: no definitions of ${showOption loc}"
    else if length defs == 1 then
      (head defs).value
    else
      (foldl' (
        first: def:
        if def.value != first.value then
          fail "The option `${showOption loc}' has conflicting definition values:${showDefs [ first def ]}"
        else
          first
      ) (head defs) (tail defs)).value;
  mergeOneOption =
    loc: defs:
    if length defs == 1 then
      (head defs).value
    else
      fail "The option `${showOption loc}' is defined multiple times while it's expected to be unique.\nDefinition values:${showDefs defs}";
  mergeDefaultOption =
    loc: defs:
    let
      list = map (def: def.value) defs;
    in
    if length list == 1 then
      head list
    else if all isFunction list then
      x: mergeDefaultOption loc (map (f: f x) list)
    else if all isList list then
      concatLists list
    else if all isAttrs list then
      foldl' (a: b: a // b) { } list
    else if all isBool list then
      foldl' (a: b: a || b) false list
    else if all isString list then
      concatStringsSep "" list
    else if all isInt list && all (x: x == head list) list then
      head list
    else
      fail "Cannot merge definitions of `${showOption loc}'. Definition values:${showDefs defs}";

  isDerivation = value: isAttrs value && (value.type or null) == "derivation";
  isStorePath =
    value:
    (isString value || isPath value || isDerivation value)
    && match "/nix/store/[0-9a-z]{32}-[^/]+" (toString value) != null;
  isStringLike = value: isString value || isPath value || (isAttrs value && value ? outPath);
  hasInfix = infix: text: match ".*${escapeRegex infix}.*" text != null;
  escapeRegex =
    let
      special = [
        "\\"
        "["
        "]"
        "{"
        "}"
        "("
        ")"
        "^"
        "$"
        "?"
        "*"
        "+"
        "|"
        "."
      ];
    in
    replaceStrings special (map (c: "\\${c}") special);

  mkOptionType =
    {
      name,
      description ? name,
      check ? (_: true),
      merge ? mergeDefaultOption,
      getSubModules ? null,
    }:
    {
      _type = "option-type";
      inherit
        name
        description
        check
        merge
        getSubModules
        ;
    };

  # lib/modules.nix: properties and their discharge.
  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  defaultOverridePriority = 100;

  dischargeProperties =
    def:
    if (def._type or "") == "merge" then
      concatLists (map dischargeProperties def.contents)
    else if (def._type or "") == "if" then
      if isBool def.condition then
        (if def.condition then dischargeProperties def.content else [ ])
      else
        fail "mkIf called with a non-Boolean condition"
    else
      [ def ];
  pushDownProperties =
    cfg:
    if (cfg._type or "") == "merge" then
      concatLists (map pushDownProperties cfg.contents)
    else if (cfg._type or "") == "if" then
      map (mapAttrs (_: mkIf cfg.condition)) (pushDownProperties cfg.content)
    else if (cfg._type or "") == "override" then
      map (mapAttrs (_: mkOverride cfg.priority)) (pushDownProperties cfg.content)
    else
      [ cfg ];
  # Only the definitions of the highest priority (numerically lowest) count.
  filterOverrides =
    defs:
    let
      getPrio = def: if (def.value._type or "") == "override" then def.value.priority else defaultOverridePriority;
      highestPrio = foldl' (prio: def: if getPrio def < prio then getPrio def else prio) 9999 defs;
      strip = def: if (def.value._type or "") == "override" then def // { value = def.value.content; } else def;
    in
    map strip (filter (def: getPrio def == highestPrio) defs);

  # The values of a list of definitions, with mkIf/mkMerge/mkOverride handled, type
  # checked and merged (lib/modules.nix, mergeDefinitions).
  mergeDefinitions =
    loc: type: defs:
    let
      discharged = concatLists (
        map (d: map (value: { inherit (d) file; inherit value; }) (dischargeProperties d.value)) defs
      );
      final = filterOverrides discharged;
      invalid = filter (def: !(type.check def.value)) final;
    in
    rec {
      isDefined = final != [ ];
      mergedValue =
        if !isDefined then
          throw "The option `${showOption loc}' is used but not defined."
        else if invalid != [ ] then
          fail "A definition for option `${showOption loc}' is not of type `${type.description}'. Definition values:${showDefs invalid}"
        else
          type.merge loc final;
      optionalValue = if isDefined then { value = mergedValue; } else { };
    };

  intBetween =
    lowest: highest:
    addCheck types.int (x: x >= lowest && x <= highest)
    // {
      name = "intBetween";
      description = "integer between ${toString lowest} and ${toString highest} (both inclusive)";
    };
  addCheck = type: check: type // { check = x: type.check x && check x; };
  separatedString =
    sep:
    mkOptionType {
      name = "separatedString";
      description = "strings concatenated with ${toJSON sep}";
      check = isString;
      merge = _loc: defs: concatStringsSep sep (map (def: def.value) defs);
    };
  strMatching =
    pattern:
    mkOptionType {
      name = "strMatching ${toJSON pattern}";
      description = "string matching the pattern ${pattern}";
      check = x: isString x && match pattern x != null;
      merge = mergeEqualOption;
    };

  # lib/types.nix (nixos-24.05)
  types = rec {
    unspecified = mkOptionType { name = "unspecified"; };
    anything = mkOptionType {
      name = "anything";
      merge = mergeDefaultOption;
    };
    bool = mkOptionType {
      name = "bool";
      description = "boolean";
      check = isBool;
      merge = mergeEqualOption;
    };
    int = mkOptionType {
      name = "int";
      description = "signed integer";
      check = isInt;
      merge = mergeEqualOption;
    };
    float = mkOptionType {
      name = "float";
      description = "floating point number";
      check = isFloat;
      merge = mergeEqualOption;
    };
    ints = {
      between = intBetween;
      positive = addCheck int (x: x > 0) // {
        name = "positiveInt";
        description = "positive integer, meaning >0";
      };
      unsigned = addCheck int (x: x >= 0) // {
        name = "unsignedInt";
        description = "unsigned integer, meaning >=0";
      };
      u16 = intBetween 0 65535;
      u32 = intBetween 0 4294967295;
    };
    port = ints.u16;
    str = mkOptionType {
      name = "str";
      description = "string";
      check = isString;
      merge = mergeEqualOption;
    };
    nonEmptyStr = strMatching "(.|\n)*[^ \t\n](.|\n)*" // {
      name = "nonEmptyStr";
    };
    singleLineStr = strMatching "[^\n\r]*\n?" // {
      name = "singleLineStr";
    };
    inherit strMatching separatedString;
    lines = separatedString "\n";
    commas = separatedString ",";
    envVar = separatedString ":";
    passwdEntry =
      entryType:
      addCheck entryType (x: isString x -> !(hasInfix ":" x || hasInfix "\n" x))
      // {
        name = "passwdEntry ${entryType.name}";
        description = "${entryType.description}, not containing newlines or colons";
      };
    path = mkOptionType {
      name = "path";
      check = x: isStringLike x && substring 0 1 (toString x) == "/";
      merge = mergeEqualOption;
    };
    package = mkOptionType {
      name = "package";
      check = x: isDerivation x || isStorePath x;
      merge = mergeOneOption;
    };
    attrs = mkOptionType {
      name = "attrs";
      description = "attribute set";
      check = isAttrs;
      merge = _loc: foldl' (res: def: res // def.value) { };
    };
    enum =
      values:
      mkOptionType {
        name = "enum";
        description = "one of ${concatStringsSep ", " (map toJSON values)}";
        check = x: elem x values;
        merge = mergeEqualOption;
      };
    listOf =
      elemType:
      mkOptionType {
        name = "listOf";
        description = "list of ${elemType.description}";
        check = isList;
        merge =
          loc: defs:
          map (x: x.value) (
            filter (x: x ? value) (
              concatLists (
                genList (
                  n:
                  let
                    def = builtins.elemAt defs n;
                  in
                  genList (
                    m:
                    (mergeDefinitions (
                      loc ++ [ "[definition ${toString (n + 1)}-entry ${toString (m + 1)}]" ]
                    ) elemType [
                      {
                        inherit (def) file;
                        value = builtins.elemAt def.value m;
                      }
                    ]).optionalValue
                  ) (length def.value)
                ) (length defs)
              )
            )
          );
        getSubModules = elemType.getSubModules;
      };
    attrsOf =
      elemType:
      mkOptionType {
        name = "attrsOf";
        description = "attribute set of ${elemType.description}";
        check = isAttrs;
        merge =
          loc: defs:
          let
            names = attrNames (foldl' (acc: def: acc // def.value) { } defs);
            merged = map (name: {
              inherit name;
              result = (mergeDefinitions (loc ++ [ name ]) elemType (
                concatLists (
                  map (
                    def:
                    if def.value ? ${name} then
                      [
                        {
                          inherit (def) file;
                          value = def.value.${name};
                        }
                      ]
                    else
                      [ ]
                  ) defs
                )
              )).optionalValue;
            }) names;
          in
          listToAttrs (
            map (m: {
              inherit (m) name;
              value = m.result.value;
            }) (filter (m: m.result ? value) merged)
          );
        getSubModules = elemType.getSubModules;
      };
    nullOr =
      elemType:
      mkOptionType {
        name = "nullOr";
        description = "null or ${elemType.description}";
        check = x: x == null || elemType.check x;
        merge =
          loc: defs:
          let
            nulls = filter (def: def.value == null) defs;
          in
          if nulls == defs then
            null
          else if nulls != [ ] then
            fail "The option `${showOption loc}' is defined both null and not null, in ${
              concatStringsSep ", " (map (d: d.file) defs)
            }."
          else
            elemType.merge loc defs;
        getSubModules = elemType.getSubModules;
      };
    either =
      t1: t2:
      mkOptionType {
        name = "either";
        description = "${t1.description} or ${t2.description}";
        check = x: t1.check x || t2.check x;
        merge =
          loc: defs:
          if all (def: t1.check def.value) defs then
            t1.merge loc defs
          else if all (def: t2.check def.value) defs then
            t2.merge loc defs
          else
            mergeOneOption loc defs;
      };
    oneOf =
      ts:
      if ts == [ ] then fail "types.oneOf needs at least one type" else foldl' either (head ts) (tail ts);
    # types.submodule: a definition that is a set only defines config (shorthandOnlyDefinesConfig).
    submodule =
      modules:
      let
        staticModules = if isList modules then modules else [ modules ];
      in
      mkOptionType {
        name = "submodule";
        check = x: isAttrs x || isFunction x || path.check x;
        merge =
          loc: defs:
          (evalModules {
            modules =
              staticModules
              ++ map (
                def:
                if isAttrs def.value then
                  {
                    _file = def.file;
                    config = def.value;
                  }
                else
                  {
                    _file = def.file;
                    imports = [ def.value ];
                  }
              ) defs;
            prefix = loc;
            args.name = if loc == [ ] then "" else builtins.elemAt loc (length loc - 1);
          }).config;
        getSubModules = staticModules;
      };
  };

  evalModules = import ./modules.nix { inherit lib; };

  hasPrefix = prefix: text: substring 0 (stringLength prefix) text == prefix;

  lib = rec {
    inherit
      hasPrefix
      types
      mkOptionType
      mkIf
      mkMerge
      mkOverride
      mergeEqualOption
      mergeOneOption
      mergeDefinitions
      pushDownProperties
      showOption
      showDefs
      isDerivation
      evalModules
      ;
    mkOption = attrs: { _type = "option"; } // attrs;
    mkEnableOption =
      name:
      mkOption {
        default = false;
        example = true;
        description = "Whether to enable ${name}.";
        type = types.bool;
      };
    mkDefault = mkOverride 1000;
    mkOptionDefault = mkOverride 1500;
    mkForce = mkOverride 50;
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    optional = cond: value: if cond then [ value ] else [ ];
    optionals = cond: value: if cond then value else [ ];
    optionalAttrs = cond: value: if cond then value else { };
    optionalString = cond: value: if cond then value else "";
    hasSuffix =
      suffix: text:
      let
        n = stringLength text;
        m = stringLength suffix;
      in
      n >= m && substring (n - m) m text == suffix;
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
    # lib/fileset/default.nix: a file set's paths must exist and lie under `root`.
    fileset =
      let
        paths =
          set:
          if isPath set then
            [ set ]
          else
            concatLists (map paths set.members);
      in
      {
        unions = members: {
          _type = "fileset";
          inherit members;
        };
        fileFilter = _predicate: path: {
          _type = "fileset";
          members = [ path ];
        };
        toSource =
          { root, fileset }:
          let
            missing = filter (path: !builtins.pathExists path) (paths fileset);
            outside = filter (path: !(hasPrefix (toString root) (toString path))) (paths fileset);
          in
          if missing != [ ] then
            fail "lib.fileset.toSource: ${toString (head missing)} does not exist"
          else if outside != [ ] then
            fail "lib.fileset.toSource: ${toString (head outside)} is not under ${toString root}"
          else
            "/nix/store/00000000000000000000000000000000-source";
      };
    licenses.asl20 = {
      shortName = "asl20";
    };
    platforms.linux = [ "x86_64-linux" ];
    nameValuePair = name: value: { inherit name value; };
    mapAttrs' = f: set: listToAttrs (map (name: f name set.${name}) (attrNames set));
    unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
    inherit any all hasInfix;
  };
in
lib
