#!/bin/sh
# Install darkbloom into its own virtual environment and put `darkbloom` on PATH.
#
#   curl -fsSL https://COORDINATOR/install.sh | sh     install the coordinator's registered release
#   ./install.sh                                     install from this checkout (or upgrade it)
#   ./install.sh --from SPEC                         install SPEC (a path, a wheel, or a pip requirement)
#   ./install.sh --coordinator URL                   install URL's latest release, verifying its SHA-256
#
# Environment: DARKBLOOM_HOME (default ~/.darkbloom) holds the venv; DARKBLOOM_BIN (default
# ~/.local/bin) gets the `darkbloom` link; DARKBLOOM_PYTHON picks the interpreter; DARKBLOOM_PIP_ARGS
# go to pip; DARKBLOOM_REUSE_SITE names a site-packages folder whose packages the venv may reuse
# (offline installs, CI); DARKBLOOM_NO_MODIFY_PATH=1 leaves shell profiles alone. Safe to run twice.
set -eu

say() { printf 'darkbloom-install: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# The coordinator that serves this script writes its own URL here.
served_by=""

[ -n "${HOME:-}" ] || [ -n "${DARKBLOOM_HOME:-}" ] || die "HOME is not set; set HOME or DARKBLOOM_HOME"
home="${DARKBLOOM_HOME:-$HOME/.darkbloom}"
bindir="${DARKBLOOM_BIN:-${HOME:-}/.local/bin}"
coordinator="${DARKBLOOM_COORDINATOR:-$served_by}"
spec=""

case "$0" in
  */install.sh|install.sh) here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd) ;;
  *) here="" ;;  # piped into sh: there is no checkout
esac

while [ $# -gt 0 ]; do
  case "$1" in
    --from) [ $# -ge 2 ] || die "--from needs a value"; spec="$2"; shift 2 ;;
    --coordinator) [ $# -ge 2 ] || die "--coordinator needs a value"; coordinator="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "${here:-.}/install.sh" 2>/dev/null | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

py="${DARKBLOOM_PYTHON:-}"
if [ -z "$py" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      py="$candidate"; break
    fi
  done
fi
[ -n "$py" ] || die "Python 3.11 or newer is required (python3 --version)"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$py is older than Python 3.11"

os=$(uname -s); arch=$(uname -m)
case "$os/$arch" in
  Darwin/arm64) platform="macos-arm64"; say "macOS on Apple Silicon: the MLX backend runs on the GPU (Metal)" ;;
  Darwin/*) platform="macos-$arch"; say "macOS on $arch: MLX needs Apple Silicon; this machine can run a coordinator only" ;;
  Linux/x86_64|Linux/amd64) platform="linux-x86_64"; say "Linux on $arch: the MLX backend runs on the CPU (mlx[cpu])" ;;
  Linux/aarch64|Linux/arm64) platform="linux-aarch64"; say "Linux on $arch: the MLX backend runs on the CPU (mlx[cpu])" ;;
  *) platform=$(printf '%s-%s' "$os" "$arch" | tr '[:upper:]' '[:lower:]'); say "$os/$arch is untested" ;;
esac

mkdir -p "$home"

# A coordinator with a registered release for this platform: fetch it and check its SHA-256
# before anything is installed. No release registered (404): fall back to the checkout or PyPI.
if [ -z "$spec" ] && [ -n "$coordinator" ]; then
  say "asking $coordinator for the latest $platform release"
  release=$("$py" - "$coordinator" "$platform" "$home/downloads" <<'PY'
import hashlib, json, os, sys, urllib.error, urllib.parse, urllib.request
base, platform, dest = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
url = f"{base}/v1/releases/latest?platform={urllib.parse.quote(platform)}"
try:
    with urllib.request.urlopen(url, timeout=30) as resp:
        rel = json.load(resp)
except urllib.error.HTTPError as exc:
    if exc.code == 404:
        sys.exit(0)  # nothing registered: print nothing
    sys.exit(f"{url}: HTTP {exc.code}")
except (OSError, ValueError) as exc:
    sys.exit(f"{url}: {exc}")
name = os.path.basename(urllib.parse.urlsplit(rel["url"]).path) or "darkbloom-release.whl"
os.makedirs(dest, exist_ok=True)
path = os.path.join(dest, name)
digest = hashlib.sha256()
with urllib.request.urlopen(rel["url"], timeout=300) as resp, open(path, "wb") as out:
    for block in iter(lambda: resp.read(1 << 16), b""):
        digest.update(block)
        out.write(block)
if digest.hexdigest() != rel["sha256"].lower():
    os.remove(path)
    sys.exit(f"SHA-256 mismatch for {rel['url']}: the release says {rel['sha256']}, the download is {digest.hexdigest()}; not installing")
print(path)
print(rel["version"])
PY
) || die "could not fetch a verified release from $coordinator"
  if [ -n "$release" ]; then
    spec=$(printf '%s\n' "$release" | sed -n 1p)
    say "release $(printf '%s\n' "$release" | sed -n 2p) downloaded and its SHA-256 verified"
  else
    say "$coordinator has no release registered for $platform"
  fi
fi

if [ -z "$spec" ]; then
  if [ -n "$here" ] && [ -f "$here/pyproject.toml" ]; then
    spec="$here"
  else
    spec="darkbloom"
  fi
fi

venv="$home/venv"
if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment in $venv"
  "$py" -m venv "$venv"
fi
if [ -n "${DARKBLOOM_REUSE_SITE:-}" ]; then
  # Packages already installed elsewhere satisfy dependencies; ours still install into the venv.
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  printf '%s\n' "$DARKBLOOM_REUSE_SITE" > "$site/darkbloom-reuse-site.pth"
fi

say "installing darkbloom from $spec (the first time downloads MLX and friends)"
# DARKBLOOM_PIP_ARGS is a list of pip options: split on spaces on purpose.
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade ${DARKBLOOM_PIP_ARGS:-} "$spec"

mkdir -p "$bindir"
ln -sf "$venv/bin/darkbloom" "$bindir/darkbloom"
"$bindir/darkbloom" --help >/dev/null || die "the installed darkbloom does not start"
if [ "$platform" = "macos-arm64" ] || [ "$os" = "Linux" ]; then
  "$venv/bin/python" -c 'import mlx.core' 2>/dev/null || say "warning: MLX does not import here; this machine can run a coordinator, not a node"
fi
say "installed $("$venv/bin/python" -c 'import darkbloom; print(darkbloom.__version__)'): $bindir/darkbloom"
case ":$PATH:" in
  *":$bindir:"*) ;;
  *)
    # Put darkbloom on PATH for future login shells, once per profile file (DARKBLOOM_NO_MODIFY_PATH=1 skips).
    line="export PATH=\"$bindir:\$PATH\"  # added by darkbloom install.sh"
    if [ -n "${DARKBLOOM_NO_MODIFY_PATH:-}" ] || [ -z "${HOME:-}" ]; then
      say "add $bindir to your PATH: echo '$line' >> ~/.profile"
    else
      profiles="$HOME/.profile"
      [ -f "$HOME/.bash_profile" ] && profiles="$profiles $HOME/.bash_profile"
      case "${SHELL:-}:$os" in *zsh:*|*:Darwin) profiles="$profiles $HOME/.zprofile" ;; esac
      for profile in $profiles; do
        if ! grep -qsF "$line" "$profile"; then
          printf '\n%s\n' "$line" >> "$profile"
          say "added $bindir to PATH in $profile"
        fi
      done
      say "open a new terminal (or run: export PATH=\"$bindir:\$PATH\") to use darkbloom"
    fi
    ;;
esac
say "next: darkbloom node doctor   (says whether this machine can serve models)"
