#!/usr/bin/env bash
# Create .venv, or add to it, and install a hash-pinned lock into it: requirements-lesson01.txt, what
# lesson 01 imports (`make lesson-01`, a learner's first command, so it is small); requirements.txt,
# what every lesson runs (the other lessons' targets, when one first runs); or requirements-dev.txt,
# that plus the test tools (`make install`, `make test`). Each lock holds the smaller ones at the
# same versions, so a later lock only adds packages to what an earlier one installed.
#
# uv installs the lock in seconds where pip takes most of a minute (`make bench-first-answer`
# measures both). uv itself comes first, without pip: scripts/fetch_uv.py downloads the uv wheel
# that requirements.txt pins (lesson 01's lock has no uv of its own) and checks it against that
# lock's hashes. Where there is no uv wheel for the platform, pip installs uv instead.
# INSTALLER=pip installs the whole lock with pip.
# Either way every package must match a hash in the lock, or nothing is installed.
#
# uv writes the byte-code as it installs (--compile-bytecode), as pip does; a later lock compiles
# only what it added (uv leaves byte-code that is up to date alone). Otherwise each module
# is compiled by the first process that imports it, and by every process where nothing may write
# it (PYTHONDONTWRITEBYTECODE, a read-only checkout): LangChain's imports alone then cost each
# process about 4 s of CPU more (`make lesson-11 STEP=1` took 9.3 s of CPU, 5.3 s once compiled,
# on our build machine, where PYTHONDONTWRITEBYTECODE is set).
#
# Then the course's own packages, editable, so that lessons, tests and benchmarks import them by
# name with no path set by hand: the research agent (research-agent/pyproject.toml) and the lessons'
# packages (pyproject.toml). Their build backend comes from its own hashed lock
# (research-agent/build-requirements.txt) and --no-deps leaves every dependency to the lock above.
#
# Usage: scripts/install-venv.sh PYTHON VENV LOCK
set -euo pipefail
python=$1 venv=$2 lock=$3
installer=${INSTALLER:-uv}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build_lock=$root/research-agent/build-requirements.txt
uv_lock=$root/requirements.txt
packages=(-e "$root/research-agent" -e "$root")

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "Python 3.11 or newer is needed (found $python)" >&2; exit 1; }
echo "==> creating $venv and installing $lock with $installer"
case $installer in
  pip)
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$lock" -r "$build_lock"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
      "${packages[@]}"
    ;;
  uv)
    "$python" -m venv --without-pip "$venv"
    status=0
    # Adding a lock to .venv: the uv an earlier one fetched, when it is still the one pinned.
    uv_version=$(grep -m1 '^uv==' "$uv_lock" | cut -d' ' -f1 | cut -d= -f3)
    have=$("$venv/bin/uv" --version 2>/dev/null | cut -d' ' -f2) || true
    if [ -z "$uv_version" ] || [ "$have" != "$uv_version" ]; then
      "$python" "$here/fetch_uv.py" "$uv_lock" "$venv/bin" || status=$?
    fi
    if [ $status -eq 3 ]; then
      "$venv/bin/python" -m ensurepip --upgrade >/dev/null
      uv_pin=$(grep -m1 '^uv==' "$uv_lock" | cut -d' ' -f1)
      "$venv/bin/pip" install --quiet --disable-pip-version-check "$uv_pin"
    elif [ $status -ne 0 ]; then
      exit $status
    fi
    # The system's CA store (a proxy's CA included) instead of uv's bundled one; no Python downloads.
    export UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never
    "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --require-hashes \
      --compile-bytecode -r "$lock" -r "$build_lock"
    "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --no-deps --no-build-isolation \
      "${packages[@]}"
    ;;
  *) echo "INSTALLER must be uv or pip, not $installer" >&2; exit 2 ;;
esac
