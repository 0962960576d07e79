#!/usr/bin/env bash
# A private Docker engine for the Docker launcher's tests.
#
#   scripts/docker_engine.sh start    install docker.io if needed, start the engine, print DOCKER_HOST
#   scripts/docker_engine.sh stop     remove its containers and stop it
#   scripts/docker_engine.sh status   say whether it answers (exit 0) or not (exit 1)
#   scripts/docker_engine.sh env      print the export line only
#
# Everything lives under the repository's git-ignored var/docker/. A system-wide
# engine (/var/run/docker.sock, /var/lib/docker, /etc/docker/daemon.json) is
# never read, started or stopped: the engine gets its own socket, data root,
# exec root, pid file, config file and containerd namespace.
#
# It uses the vfs storage driver (no overlay mounts needed), no iptables and no
# default bridge, so it runs inside a plain VM or container as root. A no-op
# nvidia-container-runtime-hook on its PATH lets `--gpus` requests through
# without a GPU: that tests the request the gateway sends, not a GPU.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="$ROOT/var/docker"
DATA_ROOT="$BASE/data"
BIN_DIR="$BASE/bin"
PIDFILE="$BASE/dockerd.pid"
LOGFILE="$BASE/dockerd.log"
CONFIG_FILE="$BASE/daemon.json"
# One namespace per checkout, so that a system containerd, if dockerd finds and
# reuses one, never mixes these containers with anybody else's.
NS="vllm-gateway-$(printf '%s' "$ROOT" | sha256sum | cut -c1-8)"

# Unix socket paths are limited to 108 bytes, and containerd puts its own
# sockets a few levels below the exec root: a deep checkout falls back to a
# short folder under /tmp named after the checkout.
short_dir() {
    local wanted="$1"
    if [ "${#wanted}" -le 60 ]; then
        printf '%s' "$wanted"
    else
        printf '%s' "${TMPDIR:-/tmp}/$NS"
    fi
}
RUN_DIR="$(short_dir "$BASE/run")"
EXEC_ROOT="$RUN_DIR/exec"
SOCK="$RUN_DIR/docker.sock"
export DOCKER_HOST="unix://$SOCK"

log() { printf 'docker_engine: %s\n' "$*" >&2; }

engine_answers() {
    # The engine's API decides, not a socket file left behind: /_ping answers OK.
    [ -S "$SOCK" ] && [ "$(curl -fsS --max-time 2 --unix-socket "$SOCK" http://docker/_ping 2>/dev/null)" = OK ]
}

dockerd_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    printf '%s' "$pid"
}

install_engine() {
    local packages=()
    command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 || packages+=(docker.io)
    command -v curl >/dev/null 2>&1 || packages+=(curl)
    [ "${#packages[@]}" -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ]; then
        log "${packages[*]} missing, and installing them needs root"
        exit 1
    fi
    log "installing Debian's ${packages[*]} (once)"
    # Keep the package from starting the system-wide daemon it ships: a
    # policy-rc.d that refuses service starts, only if none is there already.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
        # Removed again even when the install fails half-way.
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Other installs may hold the dpkg lock for a while: wait for it rather than fail.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    if [ "$added_policy" = 1 ]; then
        rm -f "$policy"
        trap - EXIT
    fi
}

write_support_files() {
    mkdir -p "$DATA_ROOT" "$EXEC_ROOT" "$BIN_DIR"
    printf '{}\n' >"$CONFIG_FILE"
    cat >"$BIN_DIR/nvidia-container-runtime-hook" <<'EOF'
#!/bin/sh
# Stand-in for NVIDIA's OCI hook: accepts the GPU request and does nothing.
exit 0
EOF
    chmod 755 "$BIN_DIR/nvidia-container-runtime-hook"
}

start() {
    if dockerd_pid >/dev/null && engine_answers; then
        echo "export DOCKER_HOST=$DOCKER_HOST"
        return 0
    fi
    install_engine
    write_support_files
    if pid="$(dockerd_pid)"; then
        log "engine $pid does not answer; restarting it"
        stop_engine
    fi
    rm -f "$SOCK" "$PIDFILE"
    local dockerd
    dockerd="$(command -v dockerd)"
    PATH="$BIN_DIR:$PATH" setsid "$dockerd" \
        --host "$DOCKER_HOST" \
        --data-root "$DATA_ROOT" \
        --exec-root "$EXEC_ROOT" \
        --pidfile "$PIDFILE" \
        --config-file "$CONFIG_FILE" \
        --containerd-namespace "$NS" \
        --containerd-plugins-namespace "$NS-plugins" \
        --storage-driver vfs \
        --iptables=false \
        --ip-masq=false \
        --bridge=none \
        >"$LOGFILE" 2>&1 </dev/null &
    local deadline=$((SECONDS + 60))
    until engine_answers; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "engine did not answer on $SOCK within 60 s; last lines of $LOGFILE:"
            tail -n 20 "$LOGFILE" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    log "engine up (log: $LOGFILE)"
    echo "export DOCKER_HOST=$DOCKER_HOST"
}

remove_containers() {
    engine_answers || return 0
    command -v docker >/dev/null 2>&1 || return 0
    local ids
    ids="$(docker ps -aq 2>/dev/null || true)"
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        docker rm -f $ids >/dev/null 2>&1 || true
    fi
}

stop_engine() {
    local pid
    pid="$(dockerd_pid)" || { rm -f "$PIDFILE" "$SOCK"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "engine $pid ignored SIGTERM for 30 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$PIDFILE" "$SOCK"
    unmount_leftovers
}

unmount_leftovers() {
    # dockerd leaves its network namespace file and the data root's own bind
    # mount behind; without unmounting, `rm -rf var/` fails with "busy".
    # A clean engine exit unmounts everything itself: grep then matches nothing,
    # which is no failure.
    local mnt
    awk '{print $2}' /proc/self/mounts | { grep -E "^($BASE|$RUN_DIR)(/|$)" || true; } | sort -r |
        while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
        done
}

stop() {
    remove_containers
    stop_engine
    log "engine stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        if engine_answers; then echo "running: DOCKER_HOST=$DOCKER_HOST"; else echo "not running"; exit 1; fi
        ;;
    env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
    *)
        echo "usage: $0 start|stop|status|env" >&2
        exit 2
        ;;
esac
