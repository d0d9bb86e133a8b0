# The module system of nixpkgs' lib/modules.nix (nixos-24.05), in miniature:
#
# - collectModules: files are loaded by path, other modules get "<parent>:anon-<n>" keys
#   unless they carry `key`; every key is loaded once (builtins.genericClosure).
# - mergeModules: definitions are matched to declared options level by level; mkIf/mkMerge/
#   mkOverride are pushed down and discharged; a definition of an undeclared option fails.
# - evalOptionValue: the default is a definition of priority 1500 (mkOptionDefault); the
#   highest-priority definitions are type checked and merged by the option's type.
#
# Returns { config; }: reading an option nobody defined throws "used but not defined", as
# in nixpkgs; every other error aborts (lib.nix says why).
{ lib }:
{
  modules,
  prefix ? [ ],
  args ? { },
}:

let
  inherit (builtins)
    all
    attrNames
    concatLists
    filter
    foldl'
    genList
    genericClosure
    head
    isAttrs
    isFunction
    isPath
    isString
    length
    listToAttrs
    map
    mapAttrs
    ;
  inherit (lib) showOption;
  fail = message: abort message;
  isOption = value: isAttrs value && (value._type or null) == "option";

  moduleArgs = args // {
    inherit lib;
    config = merged.config;
  };

  # lib/modules.nix, unifyModuleSyntax.
  unify =
    file: key: m:
    if m ? config || m ? options then
      let
        bad = removeAttrs m [
          "_file"
          "key"
          "disabledModules"
          "imports"
          "options"
          "config"
          "meta"
        ];
      in
      if bad != { } then
        fail "Module `${key}' has an unsupported attribute `${head (attrNames bad)}'."
      else
        {
          _file = toString (m._file or file);
          key = toString (m.key or key);
          imports = m.imports or [ ];
          options = m.options or { };
          config = m.config or { };
        }
    else
      {
        _file = toString (m._file or file);
        key = toString (m.key or key);
        imports = m.imports or [ ];
        options = { };
        config = removeAttrs m [
          "_file"
          "key"
          "disabledModules"
          "imports"
          "meta"
        ];
      };

  load =
    parentFile: fallbackKey: m:
    if isPath m || isString m then
      let
        file = toString m;
        value = import m;
      in
      unify file file (if isFunction value then value moduleArgs else value)
    else if isFunction m then
      unify parentFile fallbackKey (m moduleArgs)
    else if isAttrs m then
      unify parentFile fallbackKey m
    else
      fail "module ${parentFile} (${fallbackKey}) does not look like a module.";

  structured =
    parentFile: parentKey: list:
    genList (
      n:
      let
        module = load parentFile "${parentKey}:anon-${toString (n + 1)}" (builtins.elemAt list n);
      in
      {
        inherit (module) key;
        inherit module;
        modules = structured module._file module.key module.imports;
      }
    ) (length list);

  collected = map (item: item.module) (genericClosure {
    startSet = structured "<unknown-file>" "" modules;
    operator = item: item.modules;
  });

  # Merge declarations and definitions below `loc` (lib/modules.nix, mergeModules').
  mergeLevel =
    loc: decls: defs:
    let
      byName =
        list: attr:
        foldl' (
          acc: item:
          acc // mapAttrs (name: value: (acc.${name} or [ ]) ++ [ (item // { value = value; }) ]) item.${attr}
        ) { } list;
      declsByName = byName decls "options";
      # As defined (for options), and with properties pushed into the set (for levels).
      rawByName = mapAttrs (
        _: map (entry: {
          inherit (entry) file value;
        })
      ) (byName defs "config");
      pushedByName = mapAttrs (
        _: entries:
        concatLists (
          map (
            entry:
            map (value: {
              inherit (entry) file;
              inherit value;
            }) (lib.pushDownProperties entry.value)
          ) entries
        )
      ) rawByName;
      results = mapAttrs (
        name: declared:
        let
          here = loc ++ [ name ];
          options = filter (d: isOption d.value) declared;
        in
        if length options == length declared then
          (
            if length declared > 1 then
              fail "The option `${showOption here}' is declared more than once: ${
                builtins.concatStringsSep ", " (map (d: d._file) declared)
              }."
            else
              {
                option = evalOption here (head declared).value (head declared)._file (rawByName.${name} or [ ]);
              }
          )
        else if options != [ ] then
          fail "The option `${showOption here}' in `${(head options)._file}' is a prefix of other options."
        else
          {
            level = mergeLevel here (map (d: {
              inherit (d) _file;
              options = d.value;
            }) declared) (map (d: {
              inherit (d) file;
              config = d.value;
            }) (pushedByName.${name} or [ ]));
          }
      ) declsByName;
      undeclared = filter (name: !(declsByName ? ${name})) (attrNames rawByName);
      unmatched =
        map (name: showOption (loc ++ [ name ])) undeclared
        ++ concatLists (map (r: r.level.unmatched or [ ]) (builtins.attrValues results));
    in
    {
      config = mapAttrs (_: r: if r ? option then r.option.value else r.level.config) results;
      inherit unmatched;
    };

  evalOption =
    loc: opt: file: defs:
    let
      type = opt.type or lib.types.unspecified;
      withDefault =
        (
          if opt ? default then
            [
              {
                inherit file;
                value = lib.mkOverride 1500 opt.default;
              }
            ]
          else
            [ ]
        )
        ++ defs;
      result =
        if (opt.readOnly or false) && length withDefault > 1 then
          fail "The option `${showOption loc}' is read-only, but it's set multiple times."
        else
          lib.mergeDefinitions loc type withDefault;
    in
    {
      inherit (result) isDefined;
      value = if opt ? apply then opt.apply result.mergedValue else result.mergedValue;
    };

  merged = mergeLevel prefix (map (m: {
    inherit (m) _file;
    inherit (m) options;
  }) collected) (
    concatLists (
      map (
        m:
        map (config: {
          file = m._file;
          inherit config;
        }) (lib.pushDownProperties m.config)
      ) collected
    )
  );

  checked =
    if merged.unmatched == [ ] then
      true
    else
      fail "The option `${head merged.unmatched}' does not exist (undeclared: ${builtins.toJSON merged.unmatched}).";
in
{
  config = builtins.seq checked merged.config;
}
