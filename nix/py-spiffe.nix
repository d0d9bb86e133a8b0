# py-spiffe (PyPI: spiffe), the SPIFFE Workload API client the token service uses.
# nixpkgs (nixos-24.05) does not package it. 0.2.2 is the version pyproject.toml allows at
# minimum and the newest whose gRPC code was generated for protobuf 4.25 (header of
# spiffe/proto/workload_pb2.py), which is what nixos-24.05 ships; later releases pin
# grpcio >= 1.78, protobuf >= 6 and cryptography >= 46. Its caret pins are stricter than
# nixos-24.05's versions, so they are relaxed; pythonImportsCheck catches real breakage.
{
  lib,
  buildPythonPackage,
  fetchPypi,
  poetry-core,
  pythonRelaxDepsHook,
  cryptography,
  grpcio,
  pem,
  protobuf,
  pyasn1,
  pyasn1-modules,
  pyjwt,
}:

buildPythonPackage rec {
  pname = "spiffe";
  version = "0.2.2";
  pyproject = true;

  src = fetchPypi {
    inherit pname version;
    # sha256 of spiffe-0.2.2.tar.gz as served by PyPI (e4ca1247…6231).
    hash = "sha256-5MoSR7GghjGj+CLux9twRHttmXNP9QZw8skCDfsAYjE=";
  };

  nativeBuildInputs = [
    poetry-core
    # Explicit for nixos-24.05; later nixpkgs applies it automatically.
    pythonRelaxDepsHook
  ];

  pythonRelaxDeps = [
    "cryptography"
    "grpcio"
    "pem"
    "protobuf"
    "pyasn1"
    "pyasn1-modules"
    "pyjwt"
  ];

  propagatedBuildInputs = [
    cryptography
    grpcio
    pem
    protobuf
    pyasn1
    pyasn1-modules
    pyjwt
  ];

  # The sdist ships no tests (they live in the py-spiffe repository).
  doCheck = false;

  pythonImportsCheck = [
    "spiffe"
    "spiffe.workloadapi.workload_api_client"
  ];

  meta = {
    description = "Python library for SPIFFE support (Workload API client, SVIDs, bundles)";
    homepage = "https://github.com/HewlettPackard/py-spiffe";
    license = lib.licenses.asl20;
  };
}
