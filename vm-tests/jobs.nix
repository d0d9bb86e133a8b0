# SPIRE SVIDs of worker/agent containers, token exchange per policy, a folder rsynced from
# the laptop that becomes a job whose artifact the laptop downloads, isolation of a real
# job's container, and an API restart in the middle of a job.
{ pkgs, self }:

pkgs.testers.runNixOSTest {
  name = "flashpods-jobs";
  imports = [ (import ./nodes.nix { inherit self; }) ];
  testScript = builtins.readFile ./jobs.py;
}
