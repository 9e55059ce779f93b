#!/usr/bin/env bash
# Start the services egresstrator's tests talk to, if they are not already answering:
#   - dockerd               (log: /var/log/dockerd.log)
#   - a Consul dev agent    (log: /var/log/consul-dev.log), HTTP on 127.0.0.1:8500
# Idempotent: a service that already answers is left alone. There is no systemd here, so the
# daemons are started detached (own session, stdin from /dev/null, output to the log, no other
# inherited file descriptors) and keep running after this script exits.
# Note: /usr/local/bin/docker may be a newer CLI (28.x) than the daemon (docker.io 20.10, API
# 1.41); the CLI negotiates the API version down, which this script checks.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
fail() {
    # fail MESSAGE LOGFILE
    printf '[services] ERROR: %s\n' "$1" >&2
    if [ -n "${2:-}" ] && [ -r "$2" ]; then
        printf '[services] ---- last lines of %s ----\n' "$2" >&2
        tail -n 40 "$2" >&2 || true
        printf '[services] ---- end of %s ----\n' "$2" >&2
    fi
    exit 1
}

WAIT_SECS=${EGT_SERVICE_WAIT_SECS:-60}
DOCKERD_LOG=/var/log/dockerd.log
CONSUL_LOG=/var/log/consul-dev.log
CONSUL_HTTP=http://127.0.0.1:8500

# Run "$@" fully detached: new session, no controlling terminal, no inherited fds beyond 0-2.
detach() {
    local logfile=$1; shift
    (
        for fd in "/proc/$BASHPID/fd"/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        exec setsid nohup "$@" </dev/null >"$logfile" 2>&1
    ) &
    disown 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
docker_ok() { timeout 10 docker info >/dev/null 2>&1; }

command -v dockerd >/dev/null 2>&1 || fail "dockerd not installed (run scripts/prereqs.sh)"
command -v docker >/dev/null 2>&1 || fail "docker CLI not installed (run scripts/prereqs.sh)"

if docker_ok; then
    log "docker already answers"
else
    if pgrep -x dockerd >/dev/null 2>&1; then
        log "a dockerd process exists but does not answer yet; waiting for it"
    else
        log "starting dockerd (log: $DOCKERD_LOG)"
        detach "$DOCKERD_LOG" dockerd
    fi
    for ((i = 0; i < WAIT_SECS; i++)); do
        docker_ok && break
        sleep 1
    done
    docker_ok || fail "dockerd did not answer 'docker info' within ${WAIT_SECS}s" "$DOCKERD_LOG"
    log "dockerd up"
fi
# The CLI may be newer than the daemon: make sure they really talk (API version negotiation).
sv=$(timeout 10 docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null) \
    || fail "docker CLI cannot talk to the daemon ('docker version' failed)" "$DOCKERD_LOG"
cv=$(docker version --format '{{.Client.Version}}' 2>/dev/null || echo '?')
log "docker: client $cv, server $sv"

# ---------------------------------------------------------------------------------------------
consul_leader() { curl -fsS --max-time 2 "$CONSUL_HTTP/v1/status/leader" 2>/dev/null; }
consul_ok() {
    local l
    l=$(consul_leader) || return 1
    [ -n "$l" ] && [ "$l" != '""' ]
}

command -v consul >/dev/null 2>&1 || fail "consul not installed (run scripts/prereqs.sh)"

if consul_ok; then
    log "consul already answers (leader $(consul_leader))"
else
    if consul_leader >/dev/null; then
        log "consul answers on $CONSUL_HTTP but has no leader yet; waiting"
    elif pgrep -x consul >/dev/null 2>&1; then
        log "a consul process exists but $CONSUL_HTTP does not answer yet; waiting for it"
    else
        log "starting consul dev agent (log: $CONSUL_LOG)"
        detach "$CONSUL_LOG" consul agent -dev -client 127.0.0.1 -bind 127.0.0.1
    fi
    for ((i = 0; i < WAIT_SECS; i++)); do
        consul_ok && break
        sleep 1
    done
    consul_ok || fail "consul dev agent has no leader at $CONSUL_HTTP/v1/status/leader after ${WAIT_SECS}s" "$CONSUL_LOG"
    log "consul up (leader $(consul_leader))"
fi
log "consul: $(consul version | head -n1)"
