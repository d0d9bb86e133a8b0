# The job image for NixOS hosts, the counterpart of scripts/build-image.sh's Debian image:
# what the container entrypoints need (sh, coreutils, curl, jq, git, CA certificates) and
# the Claude Code CLI (./claude-code.nix), as `flashpods-job:latest` (podman names an
# unqualified image `localhost/flashpods-job:latest`, the API's default). Load it
# with `services.flashpods.podman.preloadImages = [ flashpods.packages.x86_64-linux.job-image ]`.
# buildLayeredImage's `contents`, `extraCommands` and `config`:
# nixpkgs doc/build-helpers/images/dockertools.section.md.
{
  dockerTools,
  bashInteractive,
  coreutils,
  findutils,
  gnugrep,
  gnused,
  curl,
  jq,
  git,
  procps,
  python3Minimal,
  cacert,
  claude-code,
}:

dockerTools.buildLayeredImage {
  name = "flashpods-job";
  tag = "latest";
  contents = [
    bashInteractive # /bin/sh
    coreutils
    findutils
    gnugrep
    gnused
    curl
    jq
    git
    procps
    python3Minimal
    cacert
    claude-code
  ];
  # /tmp for the entrypoint's HOME and the CLI's result; mount points of every job.
  extraCommands = ''
    mkdir -m 1777 tmp
    mkdir -p work artifacts
  '';
  config = {
    Cmd = [ "/bin/sh" ];
    WorkingDir = "/work";
    Env = [
      "PATH=/bin"
      "SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt"
    ];
  };
}
