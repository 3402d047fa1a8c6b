#!/usr/bin/env bash
# `make gvisor`: install gVisor (Debian's `runsc` package) and register it with the Docker Engine as
# two runtimes, so a container can run on gVisor's application kernel instead of the host's:
#   runsc      --network=none  for containers with no network (`docker run --network none`); gVisor's
#                              own network stack is off, so the code has no socket to the host at all.
#   runsc-net  --network=host  for containers on a bridge or internal network: gVisor hands socket
#                              calls to the container's own network namespace (the one Docker set up),
#                              as runsc cannot build its own network stack inside Docker's.
# One runtime cannot do both on this engine: with --network=none no container gets a network, and
# without it every container fails to start ("cannot run with network enabled in root network
# namespace"). Both use the ptrace platform, which needs no /dev/kvm (RUNSC_PLATFORM=kvm to change).
#
# The runtimes are merged into dockerd's daemon.json (every other setting is kept; a copy of the
# file as it was is left beside it once), and dockerd re-reads it on SIGHUP: a reload, never a
# restart, so running containers keep running. Running it again changes nothing.
#   as root:                 installs, registers, reloads, checks `docker info` and one container
#   as another user:         prints the commands to run as root, changes nothing
#   Docker Desktop / macOS:  says why not (the engine runs in a VM this script cannot configure)
#
# Usage: scripts/gvisor.sh                   install and register (as root)
#        scripts/gvisor.sh --merge FILE      only merge the runtimes into FILE, a daemon.json
#                                            (created when missing; no reload)
# Env:   RUNSC_PLATFORM (ptrace), RUNSC (/usr/bin/runsc), RUNSC_CHECK_SECONDS (60), DOCKER_DAEMON_JSON (default: dockerd's --config-file, else
#        /etc/docker/daemon.json), GVISOR_UID (default: the user's id; the tests set it)
set -euo pipefail
platform=${RUNSC_PLATFORM:-ptrace}
runsc=${RUNSC:-/usr/bin/runsc}

# The runtimes as daemon.json's `runtimes` section holds them.
runtimes_json() {
  cat <<EOF
{"runsc": {"path": "$runsc", "runtimeArgs": ["--platform=$platform", "--network=none"]},
 "runsc-net": {"path": "$runsc", "runtimeArgs": ["--platform=$platform", "--network=host"]}}
EOF
}

# Merge the runtimes into a daemon.json: every other key and runtime is kept, ours are replaced.
# Prints "unchanged" or "changed"; an unreadable file is an error and is left as it was. The new
# file is written beside the old one and renamed over it, so dockerd never reads half a file.
merge() {
  local file=$1
  python3 - "$file" "$(runtimes_json)" <<'PY'
import json, os, sys, tempfile

path, ours = sys.argv[1], json.loads(sys.argv[2])
try:
    with open(path) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
try:
    config = json.loads(text) if text.strip() else {}
except json.JSONDecodeError as error:
    sys.exit(f"error: {path} is not valid JSON ({error}); fix it first, it was not changed")
if not isinstance(config, dict) or not isinstance(config.get("runtimes", {}), dict):
    sys.exit(f"error: {path} has no JSON object where runtimes go; it was not changed")
runtimes = config.setdefault("runtimes", {})
if all(runtimes.get(name) == value for name, value in ours.items()):
    print("unchanged")
    sys.exit(0)
runtimes.update(ours)
folder = os.path.dirname(os.path.abspath(path))
os.makedirs(folder, exist_ok=True)
if text and not os.path.exists(path + ".before-gvisor"):
    with open(path + ".before-gvisor", "w") as f:
        f.write(text)
fd, tmp = tempfile.mkstemp(dir=folder, prefix=".daemon.json.")
with os.fdopen(fd, "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.chmod(tmp, os.stat(path).st_mode & 0o7777 if text else 0o644)
os.replace(tmp, path)
print("changed")
PY
}

if [ "${1:-}" = --merge ]; then
  [ $# -eq 2 ] || { echo "usage: $0 --merge FILE" >&2; exit 2; }
  merge "$2"
  exit 0
fi

# Where can runtimes be added? Only to a Linux engine this machine runs itself.
engine_os=$(docker info --format '{{.OperatingSystem}}' 2>/dev/null || true)
if [ "$(uname -s)" != Linux ] || [[ $engine_os == *"Docker Desktop"* ]]; then
  echo "gVisor needs a Linux Docker Engine you administer: Docker Desktop (${engine_os:-$(uname -s)})"
  echo "runs its engine in a VM whose runtimes this script cannot change. Use a Linux machine or VM"
  echo "with Docker Engine, then run 'make gvisor' there. The sandbox runs under runc meanwhile."
  exit 1
fi

have_runtimes() {
  local listed
  listed=$(docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}' 2>/dev/null) || return 1
  [[ " $listed " == *" runsc "* && " $listed " == *" runsc-net "* ]]
}

# dockerd may have been started with another config file.
dockerd_pid=$(pidof dockerd 2>/dev/null | awk '{print $1}' || true)
config=${DOCKER_DAEMON_JSON:-}
if [ -z "$config" ] && [ -n "$dockerd_pid" ]; then
  config=$(tr '\0' '\n' <"/proc/$dockerd_pid/cmdline" | sed -n 's/^--config-file=//p; /^--config-file$/{n;p}' | head -n1)
fi
config=${config:-/etc/docker/daemon.json}

if [ "${GVISOR_UID:-$(id -u)}" -ne 0 ]; then
  as_root="sudo make gvisor"
  command -v sudo >/dev/null 2>&1 || as_root="su -c 'make gvisor'"
  echo "Registering gVisor with Docker changes the daemon's configuration: it needs root. As root, run"
  echo "  $as_root"
  echo "or do its steps yourself:"
  echo "  1. apt-get update && apt-get install -y runsc"
  echo "  2. add to \"runtimes\" in $config (keep what is there):"
  runtimes_json | sed 's/^/       /'
  echo "  3. kill -HUP \$(pidof dockerd)    # a reload: running containers keep running"
  echo "  4. docker info | grep -i runtimes  # lists runsc and runsc-net"
  exit 1
fi

if [ ! -x "$runsc" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: no apt-get here: install gVisor's runsc to $runsc yourself (gvisor.dev), then run this again" >&2
    exit 1
  fi
  echo "==> installing Debian's runsc"
  exec 9>"${ENSURE_COMMAND_LOCK:-/tmp/ensure-command.lock}" # one apt-get at a time (scripts/ensure-command.sh)
  flock 9
  log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: apt-get could not install runsc" >&2
    exit 1
  fi
  rm -f "$log"
  exec 9>&-
fi
echo "==> $($runsc --version 2>&1 | head -n1)"
# Before telling Docker about it: does gVisor run on this machine, on this platform?
# Bounded: a platform that cannot work here may hang instead of failing (KVM inside some VMs).
check_seconds=${RUNSC_CHECK_SECONDS:-60}
if ! out=$(timeout "$check_seconds" "$runsc" --platform="$platform" --network=none "do" /bin/true 2>&1); then
  echo "$out" >&2
  [ -z "$out" ] && echo "runsc did not finish within ${check_seconds}s" >&2
  echo "error: runsc cannot run here with --platform=$platform; nothing was registered" >&2
  exit 1
fi

echo "==> runtimes runsc and runsc-net in $config"
merged=$(merge "$config")
if [ "$merged" = unchanged ] && have_runtimes; then
  echo "    already registered, dockerd not reloaded"
else
  if [ -z "$dockerd_pid" ]; then
    echo "error: no dockerd process here to reload (is the engine elsewhere?); $config was updated:" >&2
    echo "reload that engine's daemon with SIGHUP (never a restart) to load it" >&2
    exit 1
  fi
  echo "    reloading dockerd (SIGHUP to pid $dockerd_pid; running containers are not touched)"
  kill -HUP "$dockerd_pid"
  for _ in $(seq 1 50); do
    have_runtimes && break
    sleep 0.2
  done
  if ! have_runtimes; then
    echo "error: dockerd did not load the runtimes: see its log (journalctl -u docker) for the reload error" >&2
    exit 1
  fi
fi
echo "==> docker info: Runtimes: $(docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}')"

# One container on each, if an image with Python is here already (this script pulls nothing).
for image in agent-sandbox:python python:3.11-slim; do
  docker image inspect "$image" >/dev/null 2>&1 || continue
  for runtime in runsc runsc-net; do
    network=none
    [ $runtime = runsc ] || network=bridge
    kernel=$(docker run --rm --runtime=$runtime --network=$network "$image" \
      python3 -c 'print(open("/proc/version").read().split("(")[0].strip())')
    echo "==> docker run --runtime=$runtime --network=$network $image: $kernel"
  done
  break
done
