#!/bin/bash
# What the agent's heap holds with 200 containers enforced, with or without a burst and a
# KV storm before (BENCHMARKS.md, "Closer to the floor, part 3", RSS with 200).
#
#   bash scripts/heap-live.sh TAG plain|burst [agent arguments...]
#
# Runs the release agent under heaptrack (apt-get install heaptrack) on its own kv-path and
# state dir, with the status endpoint on 127.0.0.1:19797. With "burst" it first starts 100
# enabled containers at once, rewrites their ACL 5 times and removes them. Then it starts 200
# (4 at once), waits until /status shows them enforced, waits 12 s, prints the agent's
# /proc status lines and kills it with SIGKILL: heaptrack's "total memory leaked" is then
# the live heap at that moment. The report is /tmp/heap-live/TAG.zst (heaptrack_print).
# Needs dockerd, Consul and the test image (make test's setup), and no other agent running.
# The containers only sleep; the ACL's addresses (10.98/10.99) are never sent to.
set -euo pipefail
TAG=$1
MODE=$2
shift 2
AGENT=${AGENT:-target/release/egresstrator}
PORT=19797
KV=heap-live-$TAG/acl/
OUT=/tmp/heap-live
IMAGE=egresstrator-test:latest
mkdir -p "$OUT"
command -v heaptrack >/dev/null || { echo "heaptrack is missing: apt-get install heaptrack" >&2; exit 2; }

consul kv put "${KV}web" "10.99.0.1:tcp/80" >/dev/null
rm -rf "/tmp/heap-live-state-$TAG"
heaptrack -o "$OUT/$TAG" "$AGENT" --listen "127.0.0.1:$PORT" --hook-socket off \
    --state-dir "/tmp/heap-live-state-$TAG" -k "$KV" "$@" >"$OUT/$TAG.agent.log" 2>&1 &
sleep 3
PID=$(pgrep -x egresstrator | head -1)
echo "agent pid $PID"

enforced() {
    curl -s "127.0.0.1:$PORT/status" | python3 -c 'import json, sys
d = json.load(sys.stdin)
print(sum(1 for c in d.get("containers", []) if c.get("applied_at_unix_nano", 0) > 0 and not c.get("fail_closed")))'
}
wait_enforced() {
    local n=0
    for _ in $(seq 1 600); do
        n=$(enforced)
        [ "$n" -ge "$1" ] && return 0
        sleep 0.5
    done
    echo "timed out waiting for $1 enforced containers (have $n)" >&2
    return 1
}
start() {
    seq 1 "$2" | xargs -P "$3" -I{} docker run -d --name "heap-live-$TAG-$1-{}" \
        -e EGRESSTRATOR_ENABLE=1 -e EGRESSTRATOR_ACL=web "$IMAGE" sleep 3600 >/dev/null
}
remove() {
    docker ps -aq --filter "name=heap-live-$TAG-$1-" | xargs -r docker rm -f >/dev/null
}
cleanup() {
    kill -9 "$PID" 2>/dev/null || true
    remove b
    remove s
    consul kv delete -recurse "heap-live-$TAG/" >/dev/null
}
trap cleanup EXIT

if [ "$MODE" = burst ]; then
    start b 100 20
    wait_enforced 100
    for k in 1 2 3 4 5; do
        consul kv put "${KV}web" "10.99.0.$k:tcp/80
10.98.0.$k:tcp/443" >/dev/null
        sleep 2
    done
    remove b
    sleep 3
fi
start s 200 4
wait_enforced 200
sleep 12
grep -E "VmRSS|RssAnon|RssFile|VmHWM" "/proc/$PID/status"
kill -9 "$PID"
wait || true
heaptrack_print "$OUT/$TAG.zst" 2>/dev/null | grep -E "^(peak heap|total memory leaked)"
