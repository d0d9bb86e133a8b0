# sqlite-utils 4.2.1, the version the API is developed and tested with. nixos-24.05 ships
# 3.36, whose table creation commits the caller's open transaction (the API's migrations
# run inside BEGIN IMMEDIATE and then fail with "cannot commit - no transaction is
# active"). 4.2.1 declares its license as a PEP 639 string, which needs setuptools >= 77;
# 24.05 has 69, so the table form is patched in (same license).
{
  lib,
  buildPythonPackage,
  fetchPypi,
  setuptools,
  pythonRelaxDepsHook,
  click,
  click-default-group,
  pip,
  pluggy,
  python-dateutil,
  sqlite-fts4,
  tabulate,
}:

buildPythonPackage rec {
  pname = "sqlite-utils";
  version = "4.2.1";
  pyproject = true;

  src = fetchPypi {
    pname = "sqlite_utils";
    inherit version;
    # sha256 of sqlite_utils-4.2.1.tar.gz as served by PyPI.
    hash = "sha256-dhFLalQUcU5scOX6XEeBswG1kPaVG12jnIzGDCE4K6E=";
  };

  postPatch = ''
    substituteInPlace pyproject.toml \
      --replace-fail 'license = "Apache-2.0"' 'license = { text = "Apache-2.0" }' \
      --replace-fail '"setuptools>=77"' '"setuptools"'
  '';

  nativeBuildInputs = [
    setuptools
    pythonRelaxDepsHook
  ];

  # sqlite-utils 4.2.1 asks for click >= 8.3.1 and click-default-group >= 1.2.3 (its
  # METADATA); 24.05 has click 8.1. Both serve only its CLI: the API imports the library
  # (sqlite_utils.db), never sqlite_utils.cli, so older versions cannot break it.
  pythonRelaxDeps = [
    "click"
    "click-default-group"
  ];

  propagatedBuildInputs = [
    click
    click-default-group
    pip
    pluggy
    python-dateutil
    sqlite-fts4
    tabulate
  ];

  # The API's tests (checks.python-unit) exercise it; its own suite is long.
  doCheck = false;

  pythonImportsCheck = [ "sqlite_utils" ];

  meta = {
    description = "Python library and CLI for manipulating SQLite databases";
    homepage = "https://github.com/simonw/sqlite-utils";
    license = lib.licenses.asl20;
  };
}
