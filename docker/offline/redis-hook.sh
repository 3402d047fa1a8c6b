#!/bin/sh
# mmdebstrap --customize-hook for the redis:7 stand-in; $1 is the rootfs.
set -eu
root=$1
# The official image keeps its data in /data, owned by the redis user it runs as.
mkdir -p "$root/data"
chroot "$root" chown redis:redis /data
install -m 0755 "$(dirname "$0")/redis-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
