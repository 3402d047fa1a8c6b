#!/usr/bin/env bash
# Create .venv and install the hash-pinned requirements-dev.txt into it (`make install`).
#
# uv installs the same lock as pip, about ten times faster (`make bench-first-answer` measures both):
# pip installs uv into the fresh venv, then uv installs the lock. INSTALLER=pip keeps plain pip.
# Either way every package must match a hash in the lock, or nothing is installed.
#
# Usage: scripts/install-venv.sh PYTHON VENV LOCK
# Env:   INSTALLER   uv (default) or pip
#        UV_VERSION  the uv release to install (the Makefile pins it)
set -euo pipefail
python=$1 venv=$2 lock=$3
installer=${INSTALLER:-uv}

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "Python 3.11 or newer is needed (found $python)" >&2; exit 1; }
echo "==> creating $venv and installing $lock with $installer"
"$python" -m venv "$venv"
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
case $installer in
  pip) "${pip[@]}" -r "$lock" ;;
  uv)
    "${pip[@]}" "uv==${UV_VERSION:?UV_VERSION is not set}"
    # The system's CA store (a proxy's CA included) instead of uv's bundled one; no Python downloads.
    UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never \
      "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --require-hashes -r "$lock"
    ;;
  *) echo "INSTALLER must be uv or pip, not $installer" >&2; exit 2 ;;
esac
