# The deployment's values, as pure data (no nixpkgs, no functions).
#
# The NixOS modules import this file for their option defaults, and the lab and
# the tests read it with `nix-instantiate --eval --strict --json` (see
# services/flashpods/lab/deployment.py), so the two can never drift apart.
# Names, paths, modes and ports are the seed's (../shared/seed/13-nixos.md).
let
  # An upload's size limit: the API's FLASHPODS_UPLOAD_MAX_BYTES (checked at finalize)
  # and the rsync daemon's largest file (RLIMIT_FSIZE, while it writes) and upload
  # (pre-xfer exec flashpods-rsync-watch, while it writes).
  uploadMaxBytes = 2147483648;
  # An upload's entry limit (files, directories, symlinks): the API's
  # FLASHPODS_UPLOAD_MAX_ENTRIES (checked at finalize) and the watcher's second argument
  # (while rsync writes). ~2x a big monorepo's 100k-300k entries; 500,000 empty
  # directories take 500,000 inodes and ~1.9 GiB of directory blocks on ext4, under
  # the byte limit's 2 GiB.
  uploadMaxEntries = 500000;
in
{
  user = "flashpods";
  group = "flashpods";
  # The service user's uid (services.flashpods.uid's default): rootless jobs' egress is
  # matched by it in the firewall (firewall.nft, chain output).
  uid = 2000;

  # Networks a job may never reach (firewall.nft); the internet is everything else.
  # IANA special-purpose IPv4 ranges that route nowhere public — this-network, RFC 1918
  # (the WireGuard network among them), CGNAT, loopback, link-local, IETF protocol
  # assignments, benchmarking, multicast and reserved — but not the documentation
  # ranges the lab uses as its "internet".
  egressDenyV4 = [
    "0.0.0.0/8"
    "10.0.0.0/8"
    "100.64.0.0/10"
    "127.0.0.0/8"
    "169.254.0.0/16"
    "172.16.0.0/12"
    "192.0.0.0/24"
    "192.168.0.0/16"
    "198.18.0.0/15"
    "224.0.0.0/3"
  ];

  wireguard = {
    interface = "wg0";
    hostAddress = "10.0.0.1";
    laptopAddress = "10.0.0.2";
    prefixLength = 24;
    listenPort = 51820;
  };

  api = {
    port = 8080;
    listenAddress = "10.0.0.1:8080";
  };

  rsync = {
    port = 873;
    module = "uploads";
    # RLIMIT_FSIZE of the daemon (its transfer processes inherit it): the kernel refuses
    # to grow any file past the upload limit while rsync writes it (SIGXFSZ ends that
    # transfer); rsyncd has no size setting of its own.
    maxFileBytes = uploadMaxBytes;
    # The pre-xfer watcher's entry limit (flashpods.rsyncwatch), = FLASHPODS_UPLOAD_MAX_ENTRIES.
    maxUploadEntries = uploadMaxEntries;
  };

  # Every directory and file the host needs, with owner and mode (system.md "Host layout").
  # The service's data (database, uploads and snapshots, artifacts, logs) is 0750: no
  # other local user may read a job's commands, source or output (issue #11 W3/W4).
  # kind: "d" = directory created at boot, "f" = file that must exist (content from the operator),
  # "socket" = created by a service; listed so tests can check mode and owner.
  paths = [
    { path = "/tmp/flashpods";                 kind = "d"; user = "flashpods"; group = "flashpods"; mode = "0750"; }
    { path = "/tmp/flashpods/uploads";         kind = "d"; user = "flashpods"; group = "flashpods"; mode = "0750"; }
    { path = "/var/lib/flashpods";             kind = "d"; user = "flashpods"; group = "flashpods"; mode = "0750"; }
    { path = "/var/lib/flashpods/artifacts";   kind = "d"; user = "flashpods"; group = "flashpods"; mode = "0750"; }
    { path = "/var/lib/flashpods/db";          kind = "d"; user = "flashpods"; group = "flashpods"; mode = "0750"; }
    { path = "/var/log/flashpods";             kind = "d"; user = "flashpods"; group = "flashpods"; mode = "0750"; }
    { path = "/etc/flashpods";                 kind = "d"; user = "root";      group = "root";      mode = "0700"; }
    { path = "/etc/flashpods/api-token";       kind = "f"; user = "root";      group = "root";      mode = "0600"; }
    { path = "/etc/flashpods/secrets.json";    kind = "f"; user = "root";      group = "root";      mode = "0600"; }
    { path = "/run/flashpods";                 kind = "d"; user = "flashpods"; group = "flashpods"; mode = "0750"; }
    { path = "/run/flashpods/podman.sock";     kind = "socket"; user = "flashpods"; group = "flashpods"; mode = "0660"; }
    { path = "/run/flashpods/token.sock";      kind = "socket"; user = "flashpods"; group = "flashpods"; mode = "0660"; }
    { path = "/etc/spire";                     kind = "d"; user = "root";      group = "root";      mode = "0755"; }
    { path = "/var/lib/spire";                 kind = "d"; user = "root";      group = "root";      mode = "0700"; }
    { path = "/var/lib/spire/server";          kind = "d"; user = "root";      group = "root";      mode = "0700"; }
    { path = "/var/lib/spire/agent";           kind = "d"; user = "root";      group = "root";      mode = "0700"; }
    { path = "/run/spire";                     kind = "d"; user = "root";      group = "root";      mode = "0755"; }
    { path = "/run/spire/sockets";             kind = "d"; user = "root";      group = "root";      mode = "0755"; }
    { path = "/run/spire/sockets/agent.sock";  kind = "socket"; user = "root"; group = "root";      mode = "0777"; }
  ];

  # Environment of flashpods-api.service (seed names). The token itself arrives as the
  # systemd credential `api-token` ($CREDENTIALS_DIRECTORY/api-token); FLASHPODS_TOKEN_FILE
  # stays the seed's path for operators running the binary by hand.
  apiEnvironment = {
    FLASHPODS_DB_PATH = "/var/lib/flashpods/db/flashpods.db";
    FLASHPODS_UPLOADS_PATH = "/tmp/flashpods/uploads";
    FLASHPODS_ARTIFACTS_PATH = "/var/lib/flashpods/artifacts";
    FLASHPODS_LOGS_PATH = "/var/log/flashpods";
    FLASHPODS_LISTEN_ADDR = "10.0.0.1:8080";
    FLASHPODS_TOKEN_FILE = "/etc/flashpods/api-token";
    FLASHPODS_PODMAN_SOCKET = "/run/flashpods/podman.sock";
    FLASHPODS_SPIRE_SOCKET_DIR = "/run/spire/sockets";
    FLASHPODS_TOKEN_SOCKET = "/run/flashpods/token.sock";
    FLASHPODS_UPLOAD_MAX_BYTES = toString uploadMaxBytes;
    FLASHPODS_UPLOAD_MAX_ENTRIES = toString uploadMaxEntries;
    RUST_LOG = "info";
  };

  # Environment of flashpods-token-service.service (seed names).
  tokenServiceEnvironment = {
    FLASHPODS_SECRETS_FILE = "/etc/flashpods/secrets.json";
    FLASHPODS_SOCKET_PATH = "/run/flashpods/token.sock";
    FLASHPODS_SPIRE_SOCKET = "/run/spire/sockets/agent.sock";
    RUST_LOG = "info";
  };

  # services.rsyncd.settings (nixos-24.05 shape: `global` becomes [global], other keys are modules).
  rsyncd = {
    global = {
      address = "10.0.0.1";
      "hosts allow" = "10.0.0.2";
      "hosts deny" = "*";
      "max connections" = 10;
      "use chroot" = true;
      # The allow-list is by IP: a reverse DNS lookup of the client adds nothing but a
      # resolver dependency (seconds per upload where DNS is slow or absent).
      "reverse lookup" = false;
      timeout = 300;
    };
    uploads = {
      path = "/tmp/flashpods/uploads";
      "read only" = false;
      uid = "flashpods";
      gid = "flashpods";
      # rsync -a keeps the laptop's modes (0644 files, 0755 directories); nothing of an
      # upload is for group or others on the host.
      "incoming chmod" = "go-rwx";
      # RLIMIT_FSIZE bounds each file; this bounds the upload: before each transfer rsync
      # runs it (found on the daemon's PATH: the NixOS unit's `path`, the lab's service
      # venv), and it cuts a transfer whose upload passes the byte or the entry limit
      # while rsync writes (flashpods.rsyncwatch).
      "pre-xfer exec" = "flashpods-rsync-watch ${toString uploadMaxBytes} ${toString uploadMaxEntries}";
      # fallocate takes space without a write the watcher counts (up to a file's limit).
      "refuse options" = "preallocate";
    };
  };

  spire = {
    version = "1.13.3";
    trustDomain = "flashpods.local";
    serverBindAddress = "127.0.0.1";
    serverBindPort = 8081;
    nodeSpiffeId = "spiffe://flashpods.local/host";
    workerSpiffeId = "spiffe://flashpods.local/worker";
    agentSpiffeId = "spiffe://flashpods.local/agent";
    tokenServiceAudience = "flashpods-token-service";
    jwtSvidTtl = "5m";
    roleLabel = "flashpods-job-type";
    serverSocketPath = "/run/spire/server/private/api.sock";
    agentSocketPath = "/run/spire/sockets/agent.sock";
    podmanSocketUrl = "unix:///run/flashpods/podman.sock";
    # Identity service additions (templates modules/data/spire-{server,agent}.conf).
    serverDataDir = "/var/lib/spire/server";
    agentDataDir = "/var/lib/spire/agent";
    agentTrustBundlePath = "/var/lib/spire/agent/bootstrap-bundle.pem";
    agentJoinTokenFile = "/var/lib/spire/agent/join-token";
    tokenServiceSpiffeId = "spiffe://flashpods.local/token-service";
    logLevel = "INFO";
  };

  # Start order of the units (seed "Service Startup Order"): each unit after the ones listed.
  serviceOrder = {
    "podman-socket-flashpods" = [ "network.target" ];
    "spire-server" = [ "network.target" ];
    "spire-agent" = [ "spire-server" "podman-socket-flashpods" ];
    "flashpods-api" = [ "podman-socket-flashpods" "spire-agent" ];
    "flashpods-token-service" = [ "spire-agent" ];
  };
}
