#!/bin/sh
# Install darkbloom into its own virtual environment and put `darkbloom` on PATH.
#
#   ./install.sh                 install from this checkout (or upgrade it)
#   ./install.sh --from SPEC     install SPEC instead (a path, a wheel, or a pip requirement)
#
# Environment: DARKBLOOM_HOME (default ~/.darkbloom) holds the venv in $DARKBLOOM_HOME/venv;
# DARKBLOOM_BIN (default ~/.local/bin) gets the `darkbloom` link. Safe to run twice.
set -eu

say() { printf 'darkbloom-install: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

home="${DARKBLOOM_HOME:-$HOME/.darkbloom}"
bindir="${DARKBLOOM_BIN:-$HOME/.local/bin}"
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
spec=""

while [ $# -gt 0 ]; do
  case "$1" in
    --from) [ $# -ge 2 ] || die "--from needs a value"; spec="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

if [ -z "$spec" ]; then
  [ -f "$here/pyproject.toml" ] || die "not run from a darkbloom checkout; pass --from SPEC"
  spec="$here"
fi

py=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    py="$candidate"; break
  fi
done
[ -n "$py" ] || die "Python 3.11 or newer is required (python3 --version)"

os=$(uname -s); arch=$(uname -m)
case "$os/$arch" in
  Darwin/arm64) say "macOS on Apple Silicon: MLX runs on the GPU (Metal)" ;;
  Darwin/*) say "macOS on $arch: MLX needs Apple Silicon; this machine can run a coordinator only" ;;
  Linux/*) say "Linux on $arch: MLX runs on the CPU (mlx[cpu])" ;;
  *) say "$os/$arch is untested" ;;
esac

venv="$home/venv"
mkdir -p "$home"
if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment in $venv"
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
say "installing darkbloom from $spec (the first time downloads MLX and friends)"
"$venv/bin/python" -m pip install --quiet --upgrade "$spec"

mkdir -p "$bindir"
ln -sf "$venv/bin/darkbloom" "$bindir/darkbloom"
"$bindir/darkbloom" --help >/dev/null || die "the installed darkbloom does not start"
say "installed: $bindir/darkbloom"
case ":$PATH:" in
  *":$bindir:"*) ;;
  *) say "add $bindir to your PATH, e.g.: echo 'export PATH=\"$bindir:\$PATH\"' >> ~/.profile" ;;
esac
