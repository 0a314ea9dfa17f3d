#!/bin/sh
# Start Redis for the compose stack with authentication required (mounted into the official
# redis:7 image, or its stand-in, as the entrypoint).
#
# On first start a password for the gateway's Redis user is generated into the shared secrets
# volume (the gateway reads it from there, like its JWT secret); Redis itself gets only its
# SHA-256, in an ACL file. The default user is off: a connection without credentials can do
# nothing. Session users are created by the gateway at run time (ACL SETUSER) and re-created
# by it after a restart, so the ACL file holds only the gateway's user.
set -eu

secrets_dir=${CCD_SECRETS_DIR:-/run/ccd-secrets}
password_file="$secrets_dir/redis-password"
acl_file=/data/users.acl

if [ ! -s "$password_file" ]; then
    umask 077
    mkdir -p "$secrets_dir"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$password_file.tmp"
    mv "$password_file.tmp" "$password_file"
    echo "redis-start: generated the gateway's Redis password in $password_file"
fi

hash=$(tr -d '\n' <"$password_file" | sha256sum | cut -d' ' -f1)
umask 077
{
    echo "user default off"
    echo "user ${REDIS_GATEWAY_USER:-ccd-gateway} on #$hash ~* &* +@all"
} >"$acl_file"

exec docker-entrypoint.sh redis-server \
    --appendonly yes \
    --aclfile "$acl_file" \
    --maxmemory "${REDIS_MAXMEMORY:-1gb}" \
    --maxmemory-policy noeviction \
    --proto-max-bulk-len 128mb \
    "$@"
