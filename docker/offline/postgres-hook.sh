#!/bin/sh
# mmdebstrap --customize-hook for the postgres:15 stand-in; $1 is the rootfs.
set -eu
root=$1
# As in the official image: a new cluster listens on every address of the container.
sample=$root/usr/share/postgresql/15/postgresql.conf.sample
sed -i "s/^#listen_addresses = 'localhost'/listen_addresses = '*'/" "$sample"
grep -q "^listen_addresses = '\*'" "$sample"
# The data lives in a volume at /var/lib/postgresql/data, owned by postgres. (The socket's folder,
# /var/run/postgresql, is made by the entrypoint: mmdebstrap empties /run after this hook.)
mkdir -p "$root/var/lib/postgresql/data" "$root/docker-entrypoint-initdb.d"
chroot "$root" chown -R postgres:postgres /var/lib/postgresql
chmod 700 "$root/var/lib/postgresql/data"
# ssl-cert made a private key while the image was built: the same key in every container. The server
# does not use it (ssl is off in a new cluster); it goes.
rm -f "$root/etc/ssl/private/ssl-cert-snakeoil.key" "$root/etc/ssl/certs/ssl-cert-snakeoil.pem"
install -m 0755 "$(dirname "$0")/postgres-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
