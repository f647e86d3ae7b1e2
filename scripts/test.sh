#!/usr/bin/env bash
# The one test command: `bash scripts/test.sh [pytest args...]`.
#
# On a fresh Debian 12 machine with python3 and pip it:
#   1. creates .venv (if missing) and installs poolwatch with the `dev` extra into it,
#   2. installs the Debian packages `postgresql`, `prometheus` (for promtool) and
#      `mariadb-server-core` (with `mariadb-client-core`, for the MySQL tests) if missing,
#   3. runs ruff (lint and format check) and mypy,
#   4. starts a throwaway PostgreSQL cluster and a throwaway MariaDB server, runs pytest
#      against them on the newest supported versions (.venv), then the adapter, corpus and
#      contract tests on the oldest (.venv-oldest, scripts/oldest.txt), and always removes
#      both servers.
#
# Extra arguments go to pytest: `bash scripts/test.sh -q -k promtool`.
# Every check runs even if an earlier one failed, so one run shows every problem; the exit
# status is non-zero if any step failed. Setup failures (venv, packages, PostgreSQL under CI)
# stop the run at once.
#
# The tests find the servers through POOLWATCH_TEST_PG_DSN, POOLWATCH_TEST_PG_BIN,
# POOLWATCH_TEST_PG_DATA and POOLWATCH_TEST_MYSQL_URL (see tests/conftest.py). Under CI=true
# a missing PostgreSQL, MariaDB or promtool is an error; locally those tests are skipped
# with a message instead.

set -euo pipefail

# Work from the repository root whatever the caller's cwd, so relative paths below hold.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD

VENV=$REPO_ROOT/.venv
OLDEST_VENV=$REPO_ROOT/.venv-oldest
PG_MAX_CONNECTIONS=200
PG_START_ATTEMPTS=3

PG_TMP=""      # mktemp -d directory: data dir, Unix socket, server log
PG_BIN=""      # directory holding pg_ctl and initdb
PG_RUN=()      # prefix that runs a command as the PostgreSQL OS user (empty: ourselves)
PG_STARTED=0
MY_TMP=""      # mktemp -d directory of the MariaDB server: data dir, socket, log
MY_PID=""
FAILED_STEPS=()
START_SECONDS=$SECONDS

# -- output ---------------------------------------------------------------------------------

header() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# CI systems set CI=true; treat an empty, "0" or "false" value as a local run.
in_ci() {
    case "${CI:-}" in
        "" | 0 | false | False | FALSE | no) return 1 ;;
        *) return 0 ;;
    esac
}

# -- cleanup --------------------------------------------------------------------------------

# Runs on every exit (success, failure, Ctrl-C): a leaked postmaster would hold its port
# and keep running after CI finishes the job.
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_postgres
    stop_mariadb
    if [[ -n $PG_TMP && -d $PG_TMP ]]; then
        rm -rf -- "$PG_TMP"
    fi
    if [[ -n $MY_TMP && -d $MY_TMP ]]; then
        rm -rf -- "$MY_TMP"
    fi
    exit "$status"
}

on_signal() {
    printf '\nInterrupted.\n' >&2
    exit "$1" # the EXIT trap then cleans up
}

trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# -- system packages ------------------------------------------------------------------------

find_pg_bin() {
    local dir
    # Debian keeps server binaries out of PATH, one directory per major version; take the
    # newest. Elsewhere (a source build, another distribution) pg_ctl is usually on PATH.
    while read -r dir; do
        if [[ -x $dir/pg_ctl && -x $dir/initdb ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
    if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
        dir=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
        if [[ -x $dir/initdb ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    fi
    return 1
}

# Prints the command prefix that gives root (nothing, or sudo); fails if there is none.
root_prefix() {
    if ((EUID == 0)); then
        return 0
    elif command -v sudo >/dev/null; then
        printf 'sudo\n'
    else
        return 1
    fi
}

install_system_packages() {
    local packages=() sudo_cmd
    find_pg_bin >/dev/null || packages+=(postgresql)
    command -v promtool >/dev/null || packages+=(prometheus)
    find_mariadbd >/dev/null || packages+=(mariadb-server-core mariadb-client-core)

    header "System packages"
    if ((${#packages[@]} == 0)); then
        note "PostgreSQL, MariaDB and promtool are installed"
        return 0
    fi
    note "missing: ${packages[*]}"
    if ! command -v apt-get >/dev/null; then
        warn "apt-get not found; install ${packages[*]} yourself (promtool comes with Prometheus)"
        return 1
    fi
    if ! sudo_cmd=$(root_prefix); then
        warn "not root and sudo is not available; cannot install ${packages[*]}"
        return 1
    fi
    # No recommends: the `prometheus` package would pull in node-exporter and friends.
    # With an empty sudo_cmd the unquoted expansion disappears, which is what we want.
    # shellcheck disable=SC2086
    if ! {
        $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends "${packages[@]}" >/dev/null
    }; then
        warn "apt-get could not install ${packages[*]}"
        return 1
    fi
    note "installed: ${packages[*]}"
}

# -- Python environment ---------------------------------------------------------------------

setup_venv() {
    header "Python environment (.venv)"
    # `python3 -m venv` on an existing directory only fills in what is missing, so this also
    # repairs a venv whose creation was interrupted before pip was installed.
    if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        note "creating $VENV"
        if ! python3 -m venv "$VENV"; then
            # Debian splits ensurepip out of python3 into python3-venv.
            local sudo_cmd version
            version=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            sudo_cmd=$(root_prefix) || die "python3 -m venv failed; install python${version}-venv"
            note "python3 -m venv failed; installing python${version}-venv"
            # shellcheck disable=SC2086
            $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq
            # shellcheck disable=SC2086
            $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends "python${version}-venv" >/dev/null
            python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
        fi
    fi

    # Reinstall only when pyproject.toml (the dependency pins) changed: an editable install
    # picks up source changes by itself, and a no-op `pip install` still costs a build.
    local stamp=$VENV/.poolwatch-dev-install want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
        note "poolwatch[dev] is up to date"
    else
        note "pip install -e '.[dev]'"
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
            "$VENV/bin/python" -m pip install --quiet --editable '.[dev]' ||
            die "pip install -e '.[dev]' failed (output above)"
        printf '%s\n' "$want" >"$stamp"
    fi
    export VIRTUAL_ENV=$VENV
    export PATH=$VENV/bin:$PATH
}

# The oldest supported versions (scripts/oldest.txt) in a venv of their own; poolwatch is
# installed from the same checkout, without its own (newest) pins.
setup_oldest_venv() {
    header "Python environment with the oldest supported versions ($OLDEST_VENV)"
    if [[ ! -x $OLDEST_VENV/bin/python ]] || ! "$OLDEST_VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        python3 -m venv "$OLDEST_VENV" || return 1
    fi
    local stamp=$OLDEST_VENV/.poolwatch-oldest-install want
    want=$(cat pyproject.toml scripts/oldest.txt | sha256sum | cut -d' ' -f1)
    if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
        note "up to date"
        return 0
    fi
    note "pip install -r scripts/oldest.txt"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$OLDEST_VENV/bin/python" -m pip install --quiet -r scripts/oldest.txt || return 1
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$OLDEST_VENV/bin/python" -m pip install --quiet --no-deps --editable . || return 1
    printf '%s\n' "$want" >"$stamp"
}

# What the oldest versions must pass: everything that touches an ORM, FastAPI/Starlette or
# prometheus_client; the load tests, the fault campaign and the generated files run once,
# on the newest.
OLDEST_TESTS=(
    tests/test_tortoise_adapter.py tests/test_sqlalchemy_adapter.py
    tests/test_corpus_tortoise.py tests/test_corpus_sqlalchemy.py tests/test_never_lose.py
    tests/test_routes.py tests/test_app_endpoints.py tests/test_middleware.py
    tests/test_findings.py tests/test_exposition.py tests/test_exposition_promtool.py
    tests/test_multiprocess.py tests/test_public_api.py tests/test_config.py
    tests/test_demo.py tests/test_testing.py tests/test_pytest_plugin.py tests/test_tracing.py
    tests/test_realapp.py
)

# -- PostgreSQL -----------------------------------------------------------------------------

# Runs a command as the user that owns the cluster, from the cluster's directory (the
# postgres user may not be allowed into the caller's cwd).
as_pg() {
    (cd "$PG_TMP" && "${PG_RUN[@]}" "$@")
}

# Chooses who runs the server. PostgreSQL refuses to run as root, so root hands over to
# the `postgres` user that the Debian package creates; anyone else runs it themselves.
choose_pg_user() {
    if ((EUID != 0)); then
        PG_RUN=()
    elif ! id postgres >/dev/null 2>&1; then
        warn "running as root but there is no 'postgres' user to run the server as"
        return 1
    elif command -v runuser >/dev/null; then
        PG_RUN=(runuser -u postgres --)
    else
        PG_RUN=(su_postgres)
    fi
}

# Fallback for systems without runuser: su takes one shell string, so quote each argument.
su_postgres() {
    su -s /bin/sh postgres -c "$(printf '%q ' "$@")"
}

stop_postgres() {
    ((PG_STARTED)) || return 0
    PG_STARTED=0
    header "Stopping PostgreSQL"
    # "fast" disconnects clients that a killed test run may have left behind; if the server
    # still does not stop, "immediate" is safe because the cluster is thrown away.
    if ! as_pg "$PG_BIN/pg_ctl" stop -D "$PG_TMP/data" -m fast -w -t 20 >/dev/null 2>&1; then
        warn "pg_ctl stop -m fast failed; stopping with -m immediate"
        as_pg "$PG_BIN/pg_ctl" stop -D "$PG_TMP/data" -m immediate -w -t 20 >/dev/null 2>&1 ||
            warn "could not stop PostgreSQL (data dir $PG_TMP/data)"
    fi
}

free_port() {
    # Port 0 makes the kernel choose a free port; another process could take it before
    # PostgreSQL binds, which start_postgres() handles by trying again.
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_postgres() {
    local attempt port data log
    header "PostgreSQL"
    PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/poolwatch-pg.XXXXXX") || return 1
    data=$PG_TMP/data
    log=$PG_TMP/postgres.log
    choose_pg_user || return 1
    if ((EUID == 0)); then
        chown postgres: "$PG_TMP" || return 1
    fi

    # Trust auth and no fsync: a disposable cluster bound to localhost, where speed matters
    # and durability does not.
    if ! as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 \
        --locale=C --no-sync >"$PG_TMP/initdb.log" 2>&1; then
        cat "$PG_TMP/initdb.log" >&2
        warn "initdb failed"
        return 1
    fi
    # Appending keeps the file's owner, so this works as root too.
    cat >>"$data/postgresql.conf" <<EOF

# poolwatch test cluster (scripts/test.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_TMP'
max_connections = $PG_MAX_CONNECTIONS
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

    for ((attempt = 1; attempt <= PG_START_ATTEMPTS; attempt++)); do
        port=$(free_port)
        if as_pg "$PG_BIN/pg_ctl" start -D "$data" -l "$log" -w -t 60 -o "-p $port" >/dev/null; then
            PG_STARTED=1
            break
        fi
        warn "PostgreSQL did not start on port $port (attempt $attempt of $PG_START_ATTEMPTS):"
        tail -n 20 "$log" >&2 || true
        # pg_ctl can fail after the postmaster started (the wait timed out): stop it on exit
        # rather than start a second one.
        if [[ -f $data/postmaster.pid ]]; then
            PG_STARTED=1
            return 1
        fi
    done
    ((PG_STARTED)) || return 1

    export POOLWATCH_TEST_PG_DSN="postgresql://postgres@127.0.0.1:$port/postgres"
    export POOLWATCH_TEST_PG_BIN=$PG_BIN
    export POOLWATCH_TEST_PG_DATA=$data
    note "$("$PG_BIN/postgres" --version) at $POOLWATCH_TEST_PG_DSN"
    note "data $data, socket dir $PG_TMP"
}

# -- MariaDB (the MySQL tests) ----------------------------------------------------------------

find_mariadbd() {
    local path
    for path in /usr/sbin/mariadbd /usr/sbin/mysqld "$(command -v mariadbd 2>/dev/null)"; do
        if [[ -n $path && -x $path ]] && command -v mariadb-install-db >/dev/null; then
            printf '%s\n' "$path"
            return 0
        fi
    done
    return 1
}

# Runs a command as the user that owns the MariaDB data (nobody when we are root).
as_my() {
    if ((EUID == 0)); then
        (cd "$MY_TMP" && runuser -u nobody -- "$@")
    else
        (cd "$MY_TMP" && "$@")
    fi
}

start_mariadb() {
    local mariadbd=$1 port attempt
    header "MariaDB"
    MY_TMP=$(mktemp -d "${TMPDIR:-/tmp}/poolwatch-my.XXXXXX") || return 1
    chmod 755 "$MY_TMP"
    if ((EUID == 0)); then
        chown nobody: "$MY_TMP" || return 1
    fi
    if ! as_my mariadb-install-db --no-defaults --datadir="$MY_TMP/data" \
        --auth-root-authentication-method=normal --skip-test-db >"$MY_TMP/install.log" 2>&1; then
        cat "$MY_TMP/install.log" >&2
        warn "mariadb-install-db failed"
        return 1
    fi
    for ((attempt = 1; attempt <= 3; attempt++)); do
        port=$(free_port)
        # Root without a password, on loopback and a socket in the throwaway directory only.
        as_my "$mariadbd" --no-defaults --datadir="$MY_TMP/data" --socket="$MY_TMP/sock" \
            --port="$port" --bind-address=127.0.0.1 --skip-name-resolve \
            --pid-file="$MY_TMP/pid" --log-error="$MY_TMP/error.log" \
            --innodb-buffer-pool-size=64M --max-connections=300 >/dev/null 2>&1 &
        MY_PID=$!
        local waited
        for ((waited = 0; waited < 60; waited++)); do
            if grep -q "ready for connections" "$MY_TMP/error.log" 2>/dev/null; then
                export POOLWATCH_TEST_MYSQL_URL="mysql://root:@127.0.0.1:$port/"
                note "$("$mariadbd" --version) at 127.0.0.1:$port"
                return 0
            fi
            kill -0 "$MY_PID" 2>/dev/null || break
            sleep 0.5
        done
        warn "MariaDB did not start on port $port (attempt $attempt of 3):"
        tail -n 20 "$MY_TMP/error.log" >&2 || true
        stop_mariadb
    done
    return 1
}

stop_mariadb() {
    [[ -n $MY_PID ]] || return 0
    local pid=$MY_PID waited
    MY_PID=""
    # mariadbd was started under runuser: stop the server itself, found by its pid file.
    if [[ -f $MY_TMP/pid ]]; then
        kill "$(cat "$MY_TMP/pid")" 2>/dev/null || true
    fi
    kill "$pid" 2>/dev/null || true
    for ((waited = 0; waited < 40; waited++)); do
        [[ -f $MY_TMP/pid ]] || break
        kill -0 "$(cat "$MY_TMP/pid" 2>/dev/null || echo 0)" 2>/dev/null || break
        sleep 0.25
    done
    if [[ -f $MY_TMP/pid ]]; then
        kill -9 "$(cat "$MY_TMP/pid")" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# -- checks ---------------------------------------------------------------------------------

# Runs one check, remembering a failure instead of stopping, so later checks still report.
step() {
    local name=$1
    shift
    header "$name"
    if ! "$@"; then
        FAILED_STEPS+=("$name")
    fi
}

main() {
    local have_system_packages=1
    unset POOLWATCH_TEST_PG_DSN POOLWATCH_TEST_PG_BIN POOLWATCH_TEST_PG_DATA
    unset POOLWATCH_TEST_MYSQL_URL

    setup_venv
    install_system_packages || have_system_packages=0
    if ((!have_system_packages)) && in_ci; then
        die "CI=$CI: PostgreSQL, MariaDB and promtool are required"
    fi

    step "ruff check" ruff check poolwatch tests benchmarks alerts dashboards loadtests
    step "ruff format --check" ruff format --check poolwatch tests benchmarks alerts dashboards loadtests
    step "mypy" mypy

    if PG_BIN=$(find_pg_bin); then
        if ! start_postgres; then
            in_ci && die "PostgreSQL did not start (server log above)"
            warn "PostgreSQL did not start; PostgreSQL tests will be skipped"
        fi
    elif in_ci; then
        die "CI=$CI: PostgreSQL server binaries (pg_ctl, initdb) not found"
    else
        header "PostgreSQL"
        warn "PostgreSQL server binaries (pg_ctl, initdb) not found; PostgreSQL tests will be" \
            "skipped. Install the Debian package 'postgresql' to run them."
    fi

    local mariadbd
    if mariadbd=$(find_mariadbd); then
        if ! start_mariadb "$mariadbd"; then
            in_ci && die "MariaDB did not start (server log above)"
            warn "MariaDB did not start; MySQL tests will be skipped"
        fi
    elif in_ci; then
        die "CI=$CI: MariaDB (mariadbd, mariadb-install-db) not found"
    else
        header "MariaDB"
        warn "MariaDB not found; MySQL tests will be skipped. Install the Debian packages" \
            "'mariadb-server-core' and 'mariadb-client-core' to run them."
    fi

    step "pytest" python -m pytest "$@"
    # The version matrix: with pytest arguments (a selection), only on request.
    if (($# == 0)) || [[ ${POOLWATCH_TEST_MATRIX:-} == 1 ]]; then
        if setup_oldest_venv; then
            step "pytest on the oldest supported versions" \
                "$OLDEST_VENV/bin/python" -m pytest -q "${OLDEST_TESTS[@]}"
        else
            FAILED_STEPS+=("oldest versions: install")
        fi
    fi
    stop_postgres
    stop_mariadb

    header "Summary ($((SECONDS - START_SECONDS))s)"
    if ((${#FAILED_STEPS[@]})); then
        printf 'FAILED: %s\n' "${FAILED_STEPS[@]}" >&2
        return 1
    fi
    note "all checks passed"
}

main "$@"
