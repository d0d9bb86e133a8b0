# checks.<system>.python-format: ruff lint and format of the Python sources and of the VM
# test scripts (with the test driver's globals, vm-tests/ruff.toml). Uses the ruff of
# nixos-24.05, which may be older than the one .ci/run uses.
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
