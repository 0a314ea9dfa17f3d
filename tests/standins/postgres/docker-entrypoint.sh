#!/usr/bin/env bash
# Entrypoint of the PostgreSQL stand-in: the official image's contract, in short.
#  - Started as root: fix ownership of $PGDATA (it may be a fresh volume) and re-run this script
#    as the postgres user.
#  - First start (no $PGDATA/PG_VERSION): initdb, password auth for TCP clients from anywhere,
#    listen on all addresses, create POSTGRES_DB, run /docker-entrypoint-initdb.d/*.
#  - Then exec the server, so that it is PID 1 and receives `docker stop`'s signal itself.
set -euo pipefail

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# `docker run IMAGE -c foo=bar` means server options, as with the official image.
if [[ ${1:-} == -* ]]; then
    set -- postgres "$@"
fi

if [[ ${1:-} != postgres ]]; then
    exec "$@"
fi

if [[ $(id -u) == 0 ]]; then
    install -d -o postgres -g postgres -m 0700 "$PGDATA"
    install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    # setpriv comes with util-linux, so no gosu is needed.
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

init_database() {
    if [[ -z ${POSTGRES_PASSWORD:-} && $POSTGRES_HOST_AUTH_METHOD != trust ]]; then
        cat >&2 <<'MSG'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".
       Or set POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password.
MSG
        exit 1
    fi

    local initdb_args=()
    if [[ -n ${POSTGRES_INITDB_ARGS:-} ]]; then
        # Word splitting is the documented meaning of this variable.
        read -r -a initdb_args <<<"$POSTGRES_INITDB_ARGS"
    fi
    # Inside the container local (socket) connections are trusted, as in the official image.
    initdb_args=(--username="$POSTGRES_USER" --encoding=UTF8 --locale=C.UTF-8
        --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" "${initdb_args[@]}")
    # The password goes through a pipe, never argv. initdb rejects an empty password file, and
    # with trust there may be no password at all.
    if [[ -n ${POSTGRES_PASSWORD:-} ]]; then
        initdb "${initdb_args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD")
    else
        initdb "${initdb_args[@]}"
    fi

    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

    # A temporary server on the socket only, so nobody connects before the setup is done.
    pg_ctl -D "$PGDATA" -w start \
        -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql"

    local psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres)
    if [[ $POSTGRES_DB != postgres ]]; then
        "${psql[@]}" --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi

    local f
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
            *.sh) echo "running $f"; bash "$f" ;;
            *.sql) echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) echo "running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
            *) echo "ignoring $f" ;;
        esac
    done

    pg_ctl -D "$PGDATA" -m fast -w stop
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
}

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    init_database
fi

exec "$@"
