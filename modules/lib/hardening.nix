# The systemd sandbox every Flashpods unit starts from (pure data, no nixpkgs). Each unit
# extends it with `//` for what it needs: its paths, address families, umask, and
# exceptions (the SPIRE agent must see /proc; the API needs /tmp/flashpods).
{
  NoNewPrivileges = true;
  ProtectSystem = "strict";
  ProtectHome = true;
  PrivateTmp = true;
  PrivateDevices = true;
  ProtectKernelTunables = true;
  ProtectKernelModules = true;
  ProtectKernelLogs = true;
  ProtectControlGroups = true;
  ProtectClock = true;
  ProtectHostname = true;
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  LockPersonality = true;
  SystemCallArchitectures = "native";
  UMask = "0077";
}
