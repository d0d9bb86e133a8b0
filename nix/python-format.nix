# checks.<system>.python-format: ruff lint and format of the Python sources and of the VM
# test scripts (with the test driver's globals, vm-tests/ruff.toml). The flake passes the
# ruff of its nixpkgs-recent input: nixos-24.05's (0.4) predates ruff's 2025 style, so it
# would ask to reformat code the project's ruff formats.
{
  lib,
  runCommand,
  ruff,
}:

let
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      (lib.fileset.fileFilter (file: lib.hasSuffix ".py" file.name) ../.)
      ../vm-tests/ruff.toml
    ];
  };
in
runCommand "flashpods-python-format" { nativeBuildInputs = [ ruff ]; } ''
  cd ${src}
  export RUFF_CACHE_DIR=$TMPDIR/ruff
  ruff check --no-cache .
  ruff format --no-cache --check .
  ruff check --no-cache --config vm-tests/ruff.toml vm-tests/*.py
  ruff format --no-cache --check --config vm-tests/ruff.toml vm-tests/*.py
  touch $out
''
