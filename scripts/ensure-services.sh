#!/usr/bin/env bash
# ensure-services.sh — make sure Redis and RabbitMQ are reachable, and the tools
# tests run (promtool, systemd-analyze) installed, for `make test` / `make demo`.
# Starts them (and, on Debian/Ubuntu as root or with passwordless sudo, installs
# them) when they are not.
#
# Usage: scripts/ensure-services.sh [--check] [--no-tools] [-h|--help]
#   --check     only check reachability; never start or install anything.
#   --no-tools  Redis and RabbitMQ only, no tools (`make demo` needs none).
#
# Environment:
#   REDIS_HOST (127.0.0.1)   REDIS_PORT (6379)
#   AMQP_HOST  (127.0.0.1)   AMQP_PORT  (5672)
#   RABBITMQ_START_TIMEOUT   seconds to wait for RabbitMQ to boot (60)
#   CI                       when "true", a missing tool fails too (locally it
#                            is a warning: the tests needing it skip with the reason)
#
# Services are only started/installed when their host is local
# (127.0.0.1, localhost or ::1).  promtool (the alert rules, the metrics lint)
# comes from Debian's package "prometheus", with no Prometheus server left
# running; systemd-analyze (the units) from "systemd".
# Exit status: 0 = ready, 1 = not, 2 = usage error.
set -euo pipefail

# Non-root Debian users often lack the sbin dirs (rabbitmq-* live there).
PATH="${PATH}:/usr/local/sbin:/usr/sbin:/sbin"
export PATH

REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
REDIS_PORT="${REDIS_PORT:-6379}"
AMQP_HOST="${AMQP_HOST:-127.0.0.1}"
AMQP_PORT="${AMQP_PORT:-5672}"
RABBITMQ_START_TIMEOUT="${RABBITMQ_START_TIMEOUT:-60}"
CI="${CI:-}"

CHECK_ONLY=0
TOOLS=1
PROG="${0##*/}"

usage() {
    sed -n '2,20s/^# \{0,1\}//p' "$0"
}

while (($#)); do
    case "$1" in
        --check) CHECK_ONLY=1 ;;
        --no-tools) TOOLS=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "${PROG}: unknown argument: $1" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done

# ----------------------------------------------------------------- helpers

have() { command -v "$1" >/dev/null 2>&1; }

# Run a command with a time limit when `timeout` exists.
with_timeout() {
    local secs="$1"
    shift
    if have timeout; then
        timeout "$secs" "$@"
    else
        "$@"
    fi
}

now_ms() { date +%s%3N; }

elapsed() { # elapsed <start_ms> -> "1.2s"
    local ms
    ms=$(($(now_ms) - $1))
    printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
}

is_local() {
    case "$1" in
        127.0.0.1 | localhost | ::1) return 0 ;;
        *) return 1 ;;
    esac
}

# Privilege: "" when root, "sudo -n" when passwordless sudo works, else
# unset (ROOT_OK=0).  Determined lazily: only needed on the slow paths.
ROOT_CHECKED=0
ROOT_OK=0
SUDO=()
check_root() {
    ((ROOT_CHECKED)) && return 0
    ROOT_CHECKED=1
    if [[ "$(id -u)" -eq 0 ]]; then
        ROOT_OK=1
        SUDO=()
    elif have sudo && sudo -n true >/dev/null 2>&1; then
        ROOT_OK=1
        SUDO=(sudo -n)
    fi
    return 0
}

as_root() { ${SUDO[@]+"${SUDO[@]}"} "$@"; }

# TCP connect via bash's /dev/tcp, in a child bash so a hang can be timed out.
tcp_open() {
    # $0/$1 are expanded by the child bash, on purpose.
    # shellcheck disable=SC2016
    with_timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" >/dev/null 2>&1
}

LOGDIR="${TMPDIR:-/tmp}"
TMPFILES=()
cleanup() {
    if ((${#TMPFILES[@]})); then
        rm -f "${TMPFILES[@]}"
    fi
}
trap cleanup EXIT
# mktemp_log: sets LOG to a fresh temp file (removed on exit).  Not used via
# $(...), which would lose the TMPFILES bookkeeping in the subshell.
LOG=""
mktemp_log() {
    LOG="$(mktemp "${LOGDIR}/ensure-services.XXXXXX")"
    TMPFILES+=("$LOG")
}

indent_tail() { # indent_tail <file> [lines]
    [[ -r "$1" ]] || return 0
    tail -n "${2:-15}" "$1" 2>/dev/null | sed 's/^/    | /' >&2 || true
}

# Serialise the start/install paths between concurrent invocations
# (e.g. `make test` and `make demo` in parallel).  Best effort.
LOCKED=0
take_lock() {
    ((LOCKED)) && return 0
    LOCKED=1
    have flock || return 0
    local lockfile="${LOGDIR}/fanout-ensure-services.lock"
    if { exec 9>>"$lockfile"; } 2>/dev/null; then
        flock -w 180 9 || true
    fi
}

APT_UPDATED=0
apt_update() { # apt_update <logfile>
    echo "+ apt-get update" >>"$1"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        >>"$1" 2>&1 </dev/null 9>&- || return 1
    APT_UPDATED=1
}
apt_get_install() { # apt_get_install <package> <logfile>
    echo "+ apt-get install $1" >>"$2"
    # 9>&-: a postinst may start a daemon; it must not inherit our lock fd.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o DPkg::Lock::Timeout=120 --no-install-recommends "$1" \
        >>"$2" 2>&1 </dev/null 9>&-
}
# apt_install <package> <logfile>: returns 0 on success, 1 on failure,
# 3 when installing is not possible here (no apt-get or no root).
apt_install() {
    local pkg="$1" log="$2" policy
    have apt-get || return 3
    check_root
    ((ROOT_OK)) || return 3
    # Refresh package lists only when needed: no install candidate yet, or
    # (below) the install fails with lists that may be stale.
    policy="$(apt-cache policy "$pkg" 2>/dev/null || true)"
    if ((!APT_UPDATED)) &&
        ! grep -Eq '^[[:space:]]*Candidate:[[:space:]]*[^([:space:]]' <<<"$policy"; then
        apt_update "$log" || return 1
    fi
    apt_get_install "$pkg" "$log" && return 0
    ((APT_UPDATED)) && return 1
    apt_update "$log" || return 1
    apt_get_install "$pkg" "$log"
}

fail_hint() {
    case "${CI,,}" in
        true | 1 | yes) echo "    (CI=${CI}: a missing service is a hard failure)" >&2 ;;
        *) echo "    (start it by hand, or fix the above and re-run ${PROG})" >&2 ;;
    esac
}

# ------------------------------------------------------------------- redis

REDIS_DIR=/var/lib/redis
REDIS_LOGDIR=/var/log/redis

# redis_up: 0 when the server answers PING with PONG; REDIS_REPLY keeps
# whatever it did answer (e.g. "NOAUTH ...", "LOADING ...").
REDIS_REPLY=""
redis_up() {
    REDIS_REPLY=""
    if have redis-cli; then
        REDIS_REPLY="$(with_timeout 3 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" || true
    else
        # No redis-cli: speak the inline protocol over /dev/tcp.
        # shellcheck disable=SC2016
        REDIS_REPLY="$(with_timeout 3 bash -c '
            exec 3<>"/dev/tcp/$0/$1" || exit 1
            printf "PING\r\n" >&3
            IFS= read -r -t 2 line <&3 || exit 1
            printf "%s\n" "${line#[+-]}"' "$REDIS_HOST" "$REDIS_PORT" 2>/dev/null)" || true
        REDIS_REPLY="${REDIS_REPLY%$'\r'}"
    fi
    [[ "$REDIS_REPLY" == PONG ]]
}

ipv6_loopback_available() {
    [[ -r /proc/net/if_inet6 ]] &&
        grep -q '^00000000000000000000000000000001 ' /proc/net/if_inet6
}

# redis_launch <bind...>: start a daemonized redis-server; output to $1 log.
redis_launch() {
    local log="$1"
    shift
    echo "+ redis-server --daemonize yes --bind $* --port ${REDIS_PORT} ..." >>"$log"
    # 9>&-: don't let the daemon inherit (and so hold) our lock descriptor.
    as_root redis-server --daemonize yes --bind "$@" --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$REDIS_DIR" \
        --logfile "${REDIS_LOGDIR}/ci.log" >>"$log" 2>&1 </dev/null 9>&-
}

redis_wait() { # redis_wait <seconds>
    local deadline
    deadline=$(($(now_ms) + $1 * 1000))
    while (($(now_ms) < deadline)); do
        redis_up && return 0
        sleep 0.2
    done
    redis_up
}

redis_start() { # redis_start <log>; returns 0 when reachable afterwards
    local log="$1"
    check_root
    if ((!ROOT_OK)); then
        # Redis does not need root: fall back to per-user dirs.
        REDIS_DIR="${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}/fanout-redis-$(id -u)"
        REDIS_LOGDIR="$REDIS_DIR"
    fi
    as_root mkdir -p "$REDIS_DIR" "$REDIS_LOGDIR" >>"$log" 2>&1 || true

    if ipv6_loopback_available; then
        redis_launch "$log" 127.0.0.1 -::1 && redis_wait 5 && return 0
        echo "redis: not up after '--bind 127.0.0.1 -::1'; retrying with IPv4-only bind" >&2
    fi
    redis_launch "$log" 127.0.0.1 && redis_wait 5
}

ensure_redis() {
    local where="${REDIS_HOST}:${REDIS_PORT}"
    if redis_up; then
        if ((CHECK_ONLY)); then echo "redis: up"; else echo "redis: up (already running)"; fi
        return 0
    fi
    local why="no PONG from ${where}"
    if [[ -n "$REDIS_REPLY" ]]; then
        why="${where} answered PING with '${REDIS_REPLY}'"
    elif tcp_open "$REDIS_HOST" "$REDIS_PORT"; then
        why="${where} accepts TCP connections but does not answer PING"
    fi
    if ((CHECK_ONLY)); then
        echo "redis: DOWN (${why})" >&2
        return 1
    fi
    if ! is_local "$REDIS_HOST"; then
        echo "redis: FAILED — ${why}; host is not local, so not starting it" >&2
        fail_hint
        return 1
    fi

    take_lock
    if redis_up; then # someone else started it while we waited for the lock
        echo "redis: up (started concurrently)"
        return 0
    fi
    if tcp_open "$REDIS_HOST" "$REDIS_PORT"; then
        # Something holds the port (a Redis still loading its dataset, one
        # that wants AUTH, or not Redis at all): don't start another.
        if redis_wait 10; then
            echo "redis: up (was starting up)"
            return 0
        fi
        echo "redis: FAILED — ${where} accepts TCP connections but answers PING with" \
            "'${REDIS_REPLY:-nothing}' (password required? not Redis?); not starting another server" >&2
        fail_hint
        return 1
    fi

    local log installed=0 rc=0 t0
    mktemp_log
    log="$LOG"
    t0="$(now_ms)"
    if ! have redis-server; then
        echo "redis: redis-server not found; installing package redis-server ..." >&2
        apt_install redis-server "$log" || rc=$?
        if ((rc == 3)); then
            echo "redis: FAILED — not reachable at ${where}, redis-server is not installed," \
                "and it cannot be installed here (needs apt-get and root or passwordless sudo)" >&2
            fail_hint
            return 1
        elif ((rc != 0)); then
            echo "redis: FAILED — not reachable at ${where}; 'apt-get install redis-server' failed:" >&2
            indent_tail "$log"
            fail_hint
            return 1
        fi
        installed=1
        # A package postinst may have started it already.
        if redis_wait 1; then
            echo "redis: installed and started ($(elapsed "$t0"))"
            return 0
        fi
    fi

    if redis_start "$log"; then
        if ((installed)); then
            echo "redis: installed and started ($(elapsed "$t0"))"
        else
            echo "redis: started ($(elapsed "$t0"))"
        fi
        return 0
    fi
    echo "redis: FAILED — not reachable at ${where}; tried:" \
        "redis-server --daemonize yes --bind 127.0.0.1 [-::1] --port ${REDIS_PORT}" \
        "--dir ${REDIS_DIR} --logfile ${REDIS_LOGDIR}/ci.log" >&2
    indent_tail "$log"
    echo "    last lines of ${REDIS_LOGDIR}/ci.log:" >&2
    indent_tail "${REDIS_LOGDIR}/ci.log" 10
    fail_hint
    return 1
}

# ---------------------------------------------------------------- rabbitmq

# rabbitmq-diagnostics is only usable as root/rabbitmq (Debian's wrapper
# refuses other users) and only says something about a *local* node.
DIAG=()
DIAG_CHECKED=0
setup_diag() {
    ((DIAG_CHECKED)) && return 0
    DIAG_CHECKED=1
    is_local "$AMQP_HOST" || return 0
    have rabbitmq-diagnostics || return 0
    if [[ "$(id -u)" -eq 0 ]] || [[ "$(id -un)" == rabbitmq ]]; then
        DIAG=(rabbitmq-diagnostics)
    else
        check_root
        if ((ROOT_OK)); then DIAG=(sudo -n rabbitmq-diagnostics); fi
    fi
    return 0
}

diag_ping() {
    ((${#DIAG[@]})) || return 1
    with_timeout 15 "${DIAG[@]}" -q ping --timeout 5 >/dev/null 2>&1 </dev/null
}

# rabbit_state: sets RSTATE to "up", "down" or "partial" (the node answers
# ping but the AMQP port is closed, or vice versa: booting or misconfigured).
RSTATE=down
R_TCP=0
R_PING=0
rabbit_state() {
    setup_diag
    local tcp=0 ping=0
    tcp_open "$AMQP_HOST" "$AMQP_PORT" && tcp=1
    R_TCP=$tcp
    if ((${#DIAG[@]})); then
        diag_ping && ping=1
        R_PING=$ping
        if ((tcp && ping)); then
            RSTATE=up
        elif ((tcp || ping)); then
            RSTATE=partial
        else
            RSTATE=down
        fi
    elif ((tcp)); then
        RSTATE=up
    else
        RSTATE=down
    fi
}

rabbit_partial_desc() {
    if ((R_PING)); then
        echo "node answers 'rabbitmq-diagnostics -q ping' but ${AMQP_HOST}:${AMQP_PORT} refuses TCP connections"
    else
        echo "${AMQP_HOST}:${AMQP_PORT} accepts TCP connections but 'rabbitmq-diagnostics -q ping' fails"
    fi
}

# rabbit_wait <seconds>: poll every ~0.5 s.  The AMQP listener opens at the
# very end of boot, so poll the cheap TCP connect and only confirm with the
# (~0.5 s) `rabbitmq-diagnostics -q ping` once the port accepts connections.
rabbit_wait() {
    local deadline
    deadline=$(($(now_ms) + $1 * 1000))
    while (($(now_ms) < deadline)); do
        if tcp_open "$AMQP_HOST" "$AMQP_PORT"; then
            rabbit_state
            [[ "$RSTATE" == up ]] && return 0
        fi
        sleep 0.5
    done
    rabbit_state
    [[ "$RSTATE" == up ]]
}

diag_output() { # show why the ping fails
    ((${#DIAG[@]})) || return 0
    echo "    output of '${DIAG[*]} -q ping':" >&2
    with_timeout 15 "${DIAG[@]}" -q ping --timeout 5 2>&1 </dev/null |
        tail -n 8 | sed 's/^/    | /' >&2 || true
}

rabbit_start() { # rabbit_start <log>
    local log="$1"
    local -a envs=(
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        ERL_EPMD_ADDRESS=127.0.0.1
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
    )
    if [[ "$AMQP_PORT" != 5672 ]]; then
        envs+=("RABBITMQ_NODE_PORT=${AMQP_PORT}")
    fi
    echo "+ ${envs[*]} rabbitmq-server -detached" >>"$log"
    # Output goes to a file, never a pipe: the detached node may keep
    # inherited descriptors open and a pipe would then never reach EOF.
    # 9>&-: don't let the node inherit (and so hold) our lock descriptor.
    as_root env "${envs[@]}" rabbitmq-server -detached >>"$log" 2>&1 </dev/null 9>&-
}

rabbit_logs() {
    local f
    for f in /var/log/rabbitmq/startup_err /var/log/rabbitmq/startup_log; do
        [[ -s "$f" ]] || continue
        echo "    last lines of ${f}:" >&2
        indent_tail "$f" 10
    done
    # Newest node log.
    local newest="" g
    for g in /var/log/rabbitmq/rabbit@*.log; do
        [[ -f "$g" && "$g" != *_upgrade.log ]] || continue
        if [[ -z "$newest" || "$g" -nt "$newest" ]]; then newest="$g"; fi
    done
    f="$newest"
    if [[ -n "$f" ]]; then
        echo "    last lines of ${f}:" >&2
        indent_tail "$f" 10
    fi
}

ensure_rabbitmq() {
    local where="${AMQP_HOST}:${AMQP_PORT}"
    rabbit_state
    if [[ "$RSTATE" == up ]]; then
        if ((CHECK_ONLY)); then echo "rabbitmq: up"; else echo "rabbitmq: up (already running)"; fi
        return 0
    fi
    if ((CHECK_ONLY)); then
        if [[ "$RSTATE" == partial ]]; then
            echo "rabbitmq: DOWN ($(rabbit_partial_desc); still booting?)" >&2
        else
            echo "rabbitmq: DOWN (no TCP connection to ${where})" >&2
        fi
        return 1
    fi
    if ! is_local "$AMQP_HOST"; then
        echo "rabbitmq: FAILED — cannot connect to ${where}; host is not local, so not starting it" >&2
        fail_hint
        return 1
    fi

    take_lock
    local log installed=0 rc=0 t0 tried
    mktemp_log
    log="$LOG"
    t0="$(now_ms)"
    rabbit_state
    if [[ "$RSTATE" == up ]]; then
        echo "rabbitmq: up (started concurrently)"
        return 0
    fi
    if [[ "$RSTATE" == partial ]]; then
        # Something is there: don't start a second node.  Ping OK + port
        # closed means the node is still booting, so wait the full timeout;
        # port open + ping failing is rather a misconfiguration (CLI cannot
        # authenticate, other node name, something else on the port), so
        # give it only a few seconds.
        local wait_s="$RABBITMQ_START_TIMEOUT"
        ((R_PING)) || wait_s=5
        tried="waited ${wait_s}s for it to become ready instead of starting another node"
        if rabbit_wait "$wait_s"; then
            echo "rabbitmq: up (was booting, ready after $(elapsed "$t0"))"
            return 0
        fi
        echo "rabbitmq: FAILED — $(rabbit_partial_desc); ${tried}" >&2
        ((R_PING)) || diag_output
        rabbit_logs
        fail_hint
        return 1
    fi

    if ! have rabbitmq-server; then
        echo "rabbitmq: rabbitmq-server not found; installing package rabbitmq-server ..." >&2
        apt_install rabbitmq-server "$log" || rc=$?
        if ((rc == 3)); then
            echo "rabbitmq: FAILED — cannot connect to ${where}, rabbitmq-server is not installed," \
                "and it cannot be installed here (needs apt-get and root or passwordless sudo)" >&2
            fail_hint
            return 1
        elif ((rc != 0)); then
            echo "rabbitmq: FAILED — cannot connect to ${where}; 'apt-get install rabbitmq-server' failed:" >&2
            indent_tail "$log"
            fail_hint
            return 1
        fi
        installed=1
        DIAG_CHECKED=0 # rabbitmq-diagnostics exists now
        rabbit_state
        if [[ "$RSTATE" == partial ]] && rabbit_wait "$RABBITMQ_START_TIMEOUT"; then
            RSTATE=up
        fi
        if [[ "$RSTATE" == up ]]; then # a postinst may have started it
            echo "rabbitmq: installed and started ($(elapsed "$t0"))"
            return 0
        fi
    fi

    check_root
    if ((!ROOT_OK)); then
        echo "rabbitmq: FAILED — cannot connect to ${where}; starting rabbitmq-server needs" \
            "root or passwordless sudo (Debian's wrapper only runs as root/rabbitmq)" >&2
        fail_hint
        return 1
    fi

    tried="RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 rabbitmq-server -detached"
    if ! rabbit_start "$log"; then
        echo "rabbitmq: FAILED — cannot connect to ${where}; '${tried}' exited non-zero:" >&2
        indent_tail "$log"
        rabbit_logs
        fail_hint
        return 1
    fi
    if rabbit_wait "$RABBITMQ_START_TIMEOUT"; then
        if ((installed)); then
            echo "rabbitmq: installed and started ($(elapsed "$t0"))"
        else
            echo "rabbitmq: started ($(elapsed "$t0"))"
        fi
        return 0
    fi
    echo "rabbitmq: FAILED — not ready at ${where} within ${RABBITMQ_START_TIMEOUT}s;" \
        "tried '${tried}' then polled TCP + 'rabbitmq-diagnostics -q ping'" >&2
    indent_tail "$log"
    if ((R_TCP && !R_PING)); then diag_output; fi
    rabbit_logs
    fail_hint
    return 1
}

# ---------------------------------------------------------------- promtool

in_ci() {
    case "${CI,,}" in
        true | 1 | yes) return 0 ;;
        *) return 1 ;;
    esac
}

tool_ok() { have "$1" && with_timeout 10 "$1" --version >/dev/null 2>&1; }

# The prometheus package's postinst starts a Prometheus server (sysvinit script,
# or the systemd unit where systemd runs).  We only want promtool: stop what the
# install started, through the package's own init script or unit, never by name.
stop_packaged_prometheus() { # stop_packaged_prometheus <log>
    local log="$1"
    if [[ -d /run/systemd/system ]] && have systemctl; then
        as_root systemctl disable --now prometheus.service >>"$log" 2>&1 </dev/null 9>&- || true
    elif [[ -x /etc/init.d/prometheus ]]; then
        as_root /etc/init.d/prometheus stop >>"$log" 2>&1 </dev/null 9>&- || true
    fi
}

# ensure_tool <command> <package> [after-install hook]: the command a test runs,
# installed from its Debian package when missing.
ensure_tool() {
    local tool="$1" package="$2" after="${3:-}"
    if tool_ok "$tool"; then
        echo "$tool: installed"
        return 0
    fi
    if ((CHECK_ONLY)); then
        echo "$tool: MISSING (package $package)" >&2
        return 1
    fi
    take_lock
    if tool_ok "$tool"; then
        echo "$tool: installed (concurrently)"
        return 0
    fi
    local log rc=0 t0
    mktemp_log
    log="$LOG"
    t0="$(now_ms)"
    echo "$tool: not found; installing package $package ..." >&2
    apt_install "$package" "$log" || rc=$?
    # Whether or not the package's own set-up succeeded (prometheus: its server's
    # start fails when port 9090 is taken, failing the install after promtool was
    # unpacked), undo what it started.
    if ((rc != 3)) && [[ -n "$after" ]]; then "$after" "$log"; fi
    if tool_ok "$tool"; then
        if ((rc != 0)); then
            echo "$tool: installed ($(elapsed "$t0")); the package's own set-up failed, which $tool does not need:" >&2
            indent_tail "$log" 5
        else
            echo "$tool: installed ($(elapsed "$t0"))"
        fi
        return 0
    fi
    if ((rc == 3)); then
        echo "$tool: MISSING — it cannot be installed here (needs apt-get and root or passwordless sudo)" >&2
    else
        echo "$tool: MISSING — 'apt-get install $package' failed:" >&2
        indent_tail "$log"
    fi
    return 1
}

# -------------------------------------------------------------------- main

status=0
ensure_redis || status=1
ensure_rabbitmq || status=1
if ((TOOLS)); then
    for spec in "promtool prometheus stop_packaged_prometheus" "systemd-analyze systemd"; do
        read -r tool package after <<<"$spec"
        if ! ensure_tool "$tool" "$package" "$after"; then
            if in_ci; then
                echo "    (CI=${CI}: the tests in tests/deploy need $tool: a hard failure)" >&2
                status=1
            else
                echo "    (tests that need $tool will skip; install package $package to run them)" >&2
            fi
        fi
    done
fi
exit "$status"
