#!/bin/sh
# What `make test` needs besides Python, one line per item: found or missing.
# It never fails by itself: the tests that need a missing item fail (or, with
# LEASESTORE_TEST_ALLOW_SKIP=1, skip) as they always do.
#
# usage: scripts/check_services.sh [PYTHON]   (PYTHON: the venv's, to try a real PostgreSQL login)

PY=${1:-python3}
DSN=${LEASESTORE_TEST_PG_DSN:-postgresql://postgres@127.0.0.1:5432/test}
missing=0

line() {  # STATE WHAT DETAIL
    printf '  %-8s %-13s %s\n' "$1" "$2" "$3"
    [ "$1" = ok ] || missing=$((missing + 1))
}

version_of() {  # the first line of BINARY's version, without its build details
    case "$1" in
        */openssl) "$1" version 2>&1 ;;
        *) "$1" --version 2>&1 ;;
    esac | head -n 1 | sed 's/ *(.*//' | cut -c 1-60
}

binary() {  # NAME DEBIAN_PACKAGE [OTHER_NAME]
    path=$(command -v "$1" 2>/dev/null || { [ -n "$3" ] && command -v "$3" 2>/dev/null; })
    if [ -n "$path" ]; then
        line ok "$1" "$path ($(version_of "$path"))"
    else
        line MISSING "$1" "apt-get install -y $2"
    fi
}

postgres() {
    if "$PY" -c 'import psycopg' >/dev/null 2>&1; then
        detail=$("$PY" - "$DSN" <<'EOF' 2>&1
import sys, psycopg
try:
    with psycopg.connect(sys.argv[1], connect_timeout=3) as conn:
        print(conn.execute("SHOW server_version").fetchone()[0])
except psycopg.Error as exc:
    print(" ".join(str(exc).split())[:100])
    sys.exit(1)
EOF
        ) && line ok PostgreSQL "$DSN: server $detail" \
          || line MISSING PostgreSQL "$DSN: $detail"
    elif command -v pg_isready >/dev/null 2>&1; then
        if pg_isready -q -d "$DSN" -t 3; then
            line ok PostgreSQL "$DSN: accepting connections (pg_isready)"
        else
            line MISSING PostgreSQL "$DSN: not accepting connections (pg_isready)"
        fi
    else
        line UNKNOWN PostgreSQL "$DSN: cannot check (no psycopg in $PY, no pg_isready)"
    fi
}

echo "make test uses these real services (a missing one fails its tests; LEASESTORE_TEST_ALLOW_SKIP=1 skips them):"
postgres
binary prometheus prometheus
binary promtool prometheus
binary alertmanager prometheus-alertmanager prometheus-alertmanager
binary amtool prometheus-alertmanager
binary openssl openssl
if [ "$(id -u)" = 0 ]; then
    line ok root "the read-only and full-disk tests can mount filesystems"
else
    line MISSING root "the read-only and full-disk tests mount filesystems: run as root"
fi
if [ "$missing" = 0 ]; then
    echo "all found"
else
    echo "$missing missing or unchecked: see above"
fi
exit 0
