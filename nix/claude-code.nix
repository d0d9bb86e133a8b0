# The Claude Code CLI for job images, the same pinned release as scripts/build-image.sh:
# the npm registry's platform package, whose native binary (built with Bun) is what the
# npm wrapper's postinstall puts in place. Like nixpkgs' own claude-code-bin
# (pkgs/by-name/cl/claude-code-bin/package.nix): autoPatchelfHook for the Nix store's
# glibc, and no stripping (that would cut off the bundled program and leave bare Bun).
# nixpkgs' `claude-code` (pkgs/by-name/cl/claude-code/package.nix, the npm wrapper run by
# Node) follows its own version; pinning here keeps both hosts on the release the lab tests.
#
# The CLI is proprietary (Anthropic's terms, LICENSE.md in the package). meta.license is
# left unset so the flake evaluates without allowUnfree; deploying it means accepting
# those terms, as using an Anthropic API key does.
{
  stdenvNoCC,
  fetchurl,
  autoPatchelfHook,
}:

stdenvNoCC.mkDerivation rec {
  pname = "claude-code";
  version = "2.1.197";

  src = fetchurl {
    url = "https://registry.npmjs.org/@anthropic-ai/claude-code-linux-x64/-/claude-code-linux-x64-${version}.tgz";
    # `npm view @anthropic-ai/claude-code-linux-x64@2.1.197 dist.integrity`
    hash = "sha512-rIlKmrY0QMyHgPRX/MYWNj039vbypICvI9jVe3rs9Xy2RnNklySjyPxqh62QadznzoftEO23uYQ1tFePcQ//bg==";
  };

  nativeBuildInputs = [ autoPatchelfHook ];
  dontBuild = true;
  dontStrip = true;

  installPhase = ''
    runHook preInstall
    install -D -m 0755 claude "$out/bin/claude"
    runHook postInstall
  '';

  doInstallCheck = true;
  installCheckPhase = ''
    HOME=$TMPDIR "$out/bin/claude" --version </dev/null | grep -qx '${version} (Claude Code)'
  '';

  meta = {
    description = "Claude Code CLI (native binary from the npm registry)";
    homepage = "https://www.npmjs.com/package/@anthropic-ai/claude-code";
    platforms = [ "x86_64-linux" ];
    mainProgram = "claude";
  };
}
