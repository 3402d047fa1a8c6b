#!/bin/sh
# mmdebstrap --customize-hook for the python:3.11-slim stand-in; $1 is the rootfs.
# Makes Debian's python3.11 look like the official image where Dockerfiles notice.
set -eu
root=$1

# The official image's interpreter is /usr/local/bin/python3, and venvs built in it
# point there: give the same paths (symlinks into Debian's /usr/bin).
for name in python python3 python3.11; do ln -sf /usr/bin/python3.11 "$root/usr/local/bin/$name"; done
for name in pip pip3 pip3.11; do ln -sf /usr/bin/pip3 "$root/usr/local/bin/$name"; done

# The official image lets root `pip install` globally; Debian refuses (PEP 668) unless this goes.
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED

# Debian installs global packages into dist-packages; the official image uses
# site-packages. A symlink keeps `COPY --from=... /usr/local/lib/python3.11/site-packages` working.
mkdir -p "$root/usr/local/lib/python3.11/dist-packages"
ln -sfn dist-packages "$root/usr/local/lib/python3.11/site-packages"

# This stand-in is built for the network it is built on: trust the extra CAs the host
# trusts (e.g. an intercepting proxy's) so pip inside builds FROM it works. Only certs
# the host added itself are copied (not in Debian's bundle nor the host's mozilla set,
# so CAs Debian has since distrusted stay out), as local CAs that update-ca-certificates keeps.
host_ca=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [ -r "$host_ca" ]; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  find /usr/share/ca-certificates/mozilla -name '*.crt' -exec cat {} + 2>/dev/null >"$root/tmp/known.pem" || true
  awk -v candidates="$host_ca" -v out="$root/usr/local/share/ca-certificates/offline-host-extra" '
    /-----BEGIN CERTIFICATE-----/ { blk = "" }
    { blk = blk $0 "\n" }
    /-----END CERTIFICATE-----/ {
      if (FILENAME != candidates) seen[blk] = 1
      else if (!(blk in seen)) { n++; printf "%s", blk > (out "-" n ".crt") }
    }' "$root/etc/ssl/certs/ca-certificates.crt" "$root/tmp/known.pem" "$host_ca"
  rm -f "$root/tmp/known.pem"
  chroot "$root" update-ca-certificates >/dev/null
  echo "python hook: added $(find "$root/usr/local/share/ca-certificates" -type f | wc -l) host CA cert(s)"
fi

# Slim: no byte-code caches for the stdlib (the official image ships none either).
find "$root/usr/lib/python3.11" "$root/usr/lib/python3" -name __pycache__ -type d -prune -exec rm -rf {} +
