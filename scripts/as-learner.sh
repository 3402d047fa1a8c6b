#!/usr/bin/env bash
# Run a command as a learner on a fresh machine would: a normal user in the docker group, with
# Docker's CLI plugins (buildx, Compose v2) hidden. The CLI looks for plugins in the user's
# ~/.docker/cli-plugins and in system folders, so an empty DOCKER_CONFIG is not enough: in a
# private mount namespace (unshare -m) an empty folder is bound over each plugin folder, then the
# command runs as the user. Outside the namespace only the user (made once) and, where needed, the folders above Python change.
#
# Needs root (unshare, mount, runuser). Usage: scripts/as-learner.sh DIR COMMAND...
# (LEARNER_USER=name picks the user; it is created in the docker group if missing.)
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/as-learner.sh needs root: it hides the CLI plugins in a mount namespace" >&2
  exit 2
fi
dir=$1
shift
user=${LEARNER_USER:-learner}
if ! id "$user" >/dev/null 2>&1; then
  useradd --create-home --groups docker --shell /bin/bash "$user"
fi
home=$(getent passwd "$user" | cut -d: -f6)
# Python 3.11 itself must be the user's to run, as a learner's own is: where it lives under a
# folder only root may enter (pyenv under /root), the folders on its path become traversable
# (o+x: entered, not listed).
python=$(readlink -f "$(command -v python3.11 || command -v python3)")
folder=$(dirname "$python")
while [ "$folder" != / ]; do
  if ! runuser -u "$user" -- test -x "$folder"; then chmod o+x "$folder"; fi
  folder=$(dirname "$folder")
done
# Every folder Docker's CLI reads plugins from (docker/cli: cli-plugins/manager), and the users'.
plugin_dirs=(/usr/local/lib/docker/cli-plugins /usr/local/libexec/docker/cli-plugins
  /usr/lib/docker/cli-plugins /usr/libexec/docker/cli-plugins /root/.docker/cli-plugins
  "$home/.docker/cli-plugins")
# shellcheck disable=SC2016 # the inner script expands its own arguments
exec unshare --mount --propagation private bash -euo pipefail -c '
  dir=$1 user=$2
  empty=$(mktemp -d)
  IFS=: read -r -a plugin_dirs <<<"$3"
  shift 3
  for d in "${plugin_dirs[@]}"; do
    if [ -d "$d" ]; then mount --bind "$empty" "$d"; fi
  done
  cd "$dir"
  # The checkout belongs to root: git refuses a repository of another user unless told.
  exec runuser -u "$user" -- env -u DOCKER_CONFIG HOME="$(getent passwd "$user" | cut -d: -f6)" \
    GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0="$dir" "$@"
' as-learner "$dir" "$user" "$(IFS=:; echo "${plugin_dirs[*]}")" "$@"
