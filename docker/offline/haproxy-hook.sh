#!/bin/sh
# mmdebstrap --customize-hook for the haproxy:2.6 stand-in; $1 is the rootfs.
set -eu
root=$1
# The official image reads /usr/local/etc/haproxy/haproxy.cfg and ships no configuration of its own.
mkdir -p "$root/usr/local/etc/haproxy"
rm -f "$root/etc/haproxy/haproxy.cfg"
install -m 0755 "$(dirname "$0")/haproxy-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
