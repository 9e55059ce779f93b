#!/usr/bin/env bash
# Build the local test image egresstrator-test:latest from Debian's busybox-static.
# No image registry is reachable here, so the image is a rootfs made on this machine and
# loaded with `docker import`. Small static C programs from tests/images/src/ (rawsend,
# udpsink, xdpsend) are compiled with gcc into its /bin. Rebuilt only when the busybox binary or the
# recipe (this script's layout, tests/images/busybox/, tests/images/src/) changes (kept as image
# labels). After building, the image is smoke-tested; `--probe` additionally
# runs a listener/client check over a throwaway user-defined network egt-probe (10.231.0.0/24)
# with a container egt-probe-listener; both are removed afterwards.
#
# Busybox 1.35 (Debian 12 busybox-static) facts, verified inside this image:
#   * `nc` is busybox's small nc: options -l -ll -p PORT -w SEC -i SEC -e PROG [ARGS...].
#     There is NO -k, -z, -q, -v; a persistent server is `-ll` together with -e.
#     Everything after `-e` is the program and its arguments (no quoting needed).
#   * `wget -T SEC` SEGFAULTS (exit 139) in this build: never use -T, wrap with `timeout` instead.
#
# Recommended LISTENERS (container runs detached, e.g. `docker run -d --name egt-x --network N`):
#   TCP, one line per connection, forever:  nc -ll -p 80 -e echo ok
#   same on 8080:                           nc -ll -p 8080 -e echo ok8080
#   both ports in one container:            sh -c 'nc -ll -p 8080 -e echo ok8080 & exec nc -ll -p 80 -e echo ok'
#   HTTP (serves /www/index.html = "ok"):   httpd -f -p 80 -h /www
#   (the image's /www/index.html contains "ok"; plain `httpd -f -p 8080 -h /www` for 8080)
#   UDP, prints each datagram's payload on its own line (stdout flushed per line), exits 0
#   after SECONDS:                          udpsink [-6] PORT SECONDS      (e.g. udpsink 9999 3600)
#   (binds 0.0.0.0 / :: ; busybox has no UDP listener that prints payloads. Read what arrived
#   with `docker logs NAME`.)
#
# Recommended CLIENTS (print the listener's text and exit 0 when reachable):
#   TCP:   docker run --rm --init --network N egresstrator-test:latest \
#              timeout 5 nc -w 2 10.231.0.10 80 </dev/null              -> "ok", exit 0
#   HTTP:  docker run --rm --init --network N egresstrator-test:latest \
#              timeout 5 wget -q -O - http://10.231.0.10:80/             -> "ok", exit 0 (httpd)
#   !! Use `docker run --init` (tini, shipped with docker.io as docker-init) for anything that
#   relies on `timeout`. busybox `timeout` execs PROG in its own PID, so `docker run IMG timeout
#   3 wget ...` (and also `sh -c 'timeout 3 wget ...'`, since ash execs a lone command) makes
#   wget PID 1 of the container, which ignores SIGTERM: the timeout never fires and a dropped
#   connect hangs for the kernel's SYN retries (~130 s, exit 1). Measured. `--init` fixes it.
#   Blocked/refused, as measured with the probe below (rules put into the listener's netns):
#     nc -w 2, SYN dropped:  exit 1 after ~2 s ("nc: timed out"); -w bounds the connect by itself
#     nc, refused/REJECTed:  exit 1 at once ("can't connect to remote host ... Connection refused")
#     wget (or nc without -w), SYN dropped, under --init + timeout 3: killed, exit 143
#                            (busybox `timeout` exits 128+SIGTERM = 143, NOT 124 like coreutils)
#     wget, refused:         exit 1 at once
#   So: reachable <=> exit 0 AND the expected text was printed (compare the text, not just $?).
#   UDP over an AF_PACKET socket (bypasses the IP stack, i.e. what a firewall must still catch):
#     xdpsend IFACE SRC_IP DST_IP PORT PAYLOAD
#       one IPv4/UDP frame (broadcast MAC) through an AF_XDP socket in copy mode, which the
#       kernel transmits past every netfilter hook; needs CAP_NET_RAW. Prints each step; exits 1
#       naming the step that failed (e.g. "FAIL socket(AF_XDP): errno=1" without NET_RAW).
#     rawsend [-6] [-d] [-b] [-n COUNT] IFACE DST_IP PORT PAYLOAD
#       e.g. docker run --rm --network N egresstrator-test:latest rawsend eth0 10.231.0.10 9999 hi
#       -6 IPv6; -d SOCK_DGRAM (kernel writes the link header; default SOCK_RAW, rawsend writes
#       the Ethernet header); -b PACKET_QDISC_BYPASS; -n COUNT copies, 10 ms apart.
#       Source: first address of the family on IFACE (IPv6: first non-link-local, else
#       link-local), UDP source port 40000; destination MAC ff:ff:ff:ff:ff:ff (00:..:00 on lo),
#       so no ARP/ND is needed. Valid IPv4 header and UDP checksums.
#       Prints "sent N bytes" per datagram, exit 0. Failure: perror text on stderr, exit 1
#       (a packet dropped by a netfilter egress hook: "sendto: No buffer space available").
#       Usage errors exit 2. Needs CAP_NET_RAW (in Docker's default capability set).
#       The receiver must be ANOTHER netns: a frame whose source is one of the receiving netns's
#       own addresses is dropped as a martian (net.ipv4.conf.*.accept_local=0); on lo it also
#       needs route_localnet=1 (see the smoke test below).
#     Note: "sent" only means the kernel took the frame; whether it got through is what the
#     udpsink on the other side printed.
#   The image has no nft/iptables; to put rules in a container's netns from the host use
#   `nsenter -n -t "$(docker inspect -f '{{.State.Pid}}' NAME)" nft ...`.
#   Listeners are PID 1 too and ignore SIGTERM: remove them with `docker rm -f` (instant), not
#   `docker stop` (waits 10 s), or start them with --init as well.
#
# Verify it all: scripts/test-image.sh --probe   (network egt-probe, 10.231.0.0/24, cleaned up)
#   (override with EGT_PROBE_NET=NAME EGT_PROBE_SUBNET=A.B.C.0/24; EGT_TEST_IMAGE=IMG builds/tests IMG)
set -euo pipefail

IMAGE=${EGT_TEST_IMAGE:-egresstrator-test:latest}
# Bump when the layout below changes in a way that should force a rebuild.
RECIPE_VERSION=3
BUSYBOX=/bin/busybox
APPLETS=(sh ash sleep nc wget echo cat ip ifconfig ping printf true false timeout httpd ls grep
         env date kill test "[" head tail sed awk tr cut wc seq id hostname ps netstat route mkdir
         rm touch uname xargs which setsid nslookup)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FILES_DIR=$HERE/../tests/images/busybox   # static files copied into the rootfs (etc/, www/)
SRC_DIR=$HERE/../tests/images/src         # C programs compiled into the rootfs /bin
PROGRAMS=(rawsend udpsink xdpsend)        # $SRC_DIR/NAME.c -> /bin/NAME
CFLAGS=(-static -O2 -Wall -Wextra -Werror)

log() { printf '[test-image] %s\n' "$*" >&2; }
die() { printf '[test-image] ERROR: %s\n' "$*" >&2; exit 1; }

PROBE=0
for a in "$@"; do
    case $a in
        --probe) PROBE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) die "unknown argument: $a (known: --probe)" ;;
    esac
done

[ -x "$BUSYBOX" ] || die "$BUSYBOX missing: install busybox-static (scripts/prereqs.sh)"
[ -d "$FILES_DIR/etc" ] || die "$FILES_DIR/etc missing"
for p in "${PROGRAMS[@]}"; do
    [ -f "$SRC_DIR/$p.c" ] || die "$SRC_DIR/$p.c missing"
done
timeout 10 docker info >/dev/null 2>&1 || die "docker does not answer (run scripts/services.sh)"

# Serialize concurrent builds (parallel test binaries may all call this).
exec 9>/tmp/egresstrator-test-image.lock
flock 9

bb_sha=$(sha256sum "$BUSYBOX" | cut -d' ' -f1)
recipe_sha=$( {
    echo "v$RECIPE_VERSION ${APPLETS[*]}"
    echo "programs: ${PROGRAMS[*]} cflags: ${CFLAGS[*]}"
    (cd "$FILES_DIR" && find . -type f | LC_ALL=C sort | xargs sha256sum)
    (cd "$SRC_DIR" && for p in "${PROGRAMS[@]}"; do sha256sum "$p.c"; done)
} | sha256sum | cut -d' ' -f1)

label() {
    docker image inspect --format "{{ index .Config.Labels \"$1\" }}" "$IMAGE" 2>/dev/null || true
}

if [ "$(label egresstrator.busybox.sha256)" = "$bb_sha" ] \
    && [ "$(label egresstrator.recipe.sha256)" = "$recipe_sha" ]; then
    log "$IMAGE is up to date (busybox sha256 ${bb_sha:0:12})"
else
    log "building $IMAGE from $BUSYBOX (sha256 ${bb_sha:0:12})"
    command -v gcc >/dev/null 2>&1 \
        || die "gcc not found: building $IMAGE compiles ${PROGRAMS[*]} (tests/images/src/) with 'gcc -static'; install gcc and libc6-dev (scripts/prereqs.sh)"
    work=$(mktemp -d /tmp/egt-image.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    root=$work/rootfs
    mkdir -p "$root"/{bin,etc,tmp,root,www,proc,sys,dev,var/run}
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
    install -m 755 "$BUSYBOX" "$root/bin/busybox"
    for a in "${APPLETS[@]}"; do
        ln -s busybox "$root/bin/$a"
    done
    cp -R "$FILES_DIR"/. "$root"/
    for p in "${PROGRAMS[@]}"; do
        gcc "${CFLAGS[@]}" -o "$root/bin/$p" "$SRC_DIR/$p.c" \
            || die "compiling $SRC_DIR/$p.c with 'gcc ${CFLAGS[*]}' failed (static linking needs libc6-dev: scripts/prereqs.sh)"
        chmod 755 "$root/bin/$p"
    done
    chmod 644 "$root"/etc/passwd "$root"/etc/group
    tar -C "$root" --numeric-owner --owner=0 --group=0 -c . \
        | docker import \
            --change 'CMD ["/bin/sh"]' \
            --change 'ENV PATH=/bin' \
            --change "LABEL egresstrator.busybox.sha256=$bb_sha egresstrator.recipe.sha256=$recipe_sha" \
            - "$IMAGE" >/dev/null
    rm -rf "$work"
    trap - EXIT
    log "built $IMAGE ($(docker image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-19))"
fi

flock -u 9

# --- smoke test: the image runs and has a working nc ------------------------------------------
out=$(docker run --rm --network none "$IMAGE" nc --help 2>&1) || true
case $out in
    *"Usage: nc"*"-e PROG"*) log "smoke: 'nc --help' ok" ;;
    *) die "smoke test failed: 'docker run --rm $IMAGE nc --help' printed: $out" ;;
esac
out=$(docker run --rm --network none "$IMAGE" sh -c 'echo ok; id -u; ls /tmp >/dev/null && echo tmp')
[ "$out" = "$(printf 'ok\n0\ntmp')" ] || die "smoke test failed: sh/id/ls printed: $out"
# rawsend/udpsink: `udpsink 9 0` binds and exits 0 at once; rawsend without arguments prints its
# usage and exits 2; one datagram sent over lo (SOCK_RAW, no network needed) reaches a udpsink.
# Frames injected on lo from 127.0.0.1 are martians unless lo has route_localnet (127/8 from a
# device) AND accept_local (source is one of the netns's own addresses); both are per-netns.
out=$(docker run --rm --network none \
        --sysctl net.ipv4.conf.lo.route_localnet=1 --sysctl net.ipv4.conf.lo.accept_local=1 \
        "$IMAGE" sh -c '
    udpsink 9 0; echo "udpsink rc=$?"
    rawsend >/dev/null 2>&1; echo "rawsend rc=$?"
    udpsink 9999 10 >/tmp/sink &
    i=0   # resend until the sink has it (it may not be bound yet); ~0.1 s normally
    while [ ! -s /tmp/sink ] && [ $i -lt 30 ]; do
        rawsend lo 127.0.0.1 9999 smoke-ok >/tmp/sent || break
        sleep 0.1; i=$((i + 1))
    done
    cat /tmp/sent; kill $!; head -n 1 /tmp/sink' 2>&1) || true
want='udpsink rc=0
rawsend rc=2
sent 50 bytes
smoke-ok'
[ "$out" = "$want" ] || die "smoke test failed: rawsend/udpsink printed: $out"
log "smoke: rawsend/udpsink ok"

[ "$PROBE" -eq 1 ] || exit 0

# --- probe: listener + client on a throwaway user-defined network --------------------------------
# Traffic goes only between containers made here, on the network made here.
NET=${EGT_PROBE_NET:-egt-probe}
SUBNET=${EGT_PROBE_SUBNET:-10.231.0.0/24}
prefix=${SUBNET%.*}            # e.g. 10.231.0
LIP=$prefix.10
cleanup() {
    docker rm -f "$NET-listener" >/dev/null 2>&1 || true
    docker network rm "$NET" >/dev/null 2>&1 || true
}
cleanup   # leftovers of an interrupted earlier probe
trap cleanup EXIT
docker network create --subnet "$SUBNET" "$NET" >/dev/null
docker run -d --name "$NET-listener" --network "$NET" --ip "$LIP" "$IMAGE" \
    sh -c 'udpsink 9999 3600 & nc -ll -p 8080 -e echo ok8080 & httpd -p 81 -h /www; exec nc -ll -p 80 -e echo ok' >/dev/null

fails=0
check() {
    # check DESCRIPTION EXPECTED CMD...   (EXPECTED is compared with "OUTPUT rc=N")
    local desc=$1 want=$2 got rc=0 t0; shift 2
    t0=$(date +%s)
    got=$(docker run --rm --init --network "$NET" "$IMAGE" "$@" </dev/null 2>/dev/null) || rc=$?
    got="$got rc=$rc"
    if [ "$got" = "$want" ]; then
        log "probe ok:   $desc -> '$got' ($(($(date +%s) - t0))s)"
    else
        log "probe FAIL: $desc -> '$got' (wanted '$want')"
        fails=$((fails + 1))
    fi
}
# wait (bounded) until the listener answers
for _ in $(seq 1 20); do
    [ "$(docker run --rm --init --network "$NET" "$IMAGE" timeout 3 nc -w 2 "$LIP" 80 </dev/null 2>/dev/null)" = ok ] && break
    sleep 0.5
done
check "nc $LIP 80"                "ok rc=0"     timeout 5 nc -w 2 "$LIP" 80
check "nc $LIP 8080"              "ok8080 rc=0" timeout 5 nc -w 2 "$LIP" 8080
check "nc $LIP 80 again (-ll)"    "ok rc=0"     timeout 5 nc -w 2 "$LIP" 80
check "wget http://$LIP:81/"      "ok rc=0"     timeout 5 wget -q -O - "http://$LIP:81/"
check "nc $LIP 9 (closed)"        " rc=1"       timeout 5 nc -w 2 "$LIP" 9
# rawsend over the bridge in every socket mode; the listener's udpsink prints to `docker logs`.
# Sizes: SOCK_RAW 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + payload; -d (SOCK_DGRAM) without the 14.
check "rawsend eth0 $LIP 9999"       "sent 45 bytes rc=0" rawsend eth0 "$LIP" 9999 raw
check "rawsend -d eth0 $LIP 9999"    "sent 33 bytes rc=0" rawsend -d eth0 "$LIP" 9999 raw-d
check "rawsend -b eth0 $LIP 9999"    "sent 47 bytes rc=0" rawsend -b eth0 "$LIP" 9999 raw-b
check "rawsend -d -b eth0 $LIP 9999" "sent 35 bytes rc=0" rawsend -d -b eth0 "$LIP" 9999 raw-d-b
sleep 0.5
got=$(docker logs "$NET-listener" 2>/dev/null | LC_ALL=C sort | tr '\n' ' ')
if [ "$got" = "raw raw-b raw-d raw-d-b " ]; then
    log "probe ok:   udpsink in $NET-listener received: $got"
else
    log "probe FAIL: udpsink in $NET-listener received '$got' (wanted 'raw raw-b raw-d raw-d-b ')"
    fails=$((fails + 1))
fi

# Block in the listener's own namespace: DROP port 80 and 81, REJECT 8080.
lpid=$(docker inspect -f '{{.State.Pid}}' "$NET-listener")
nsenter -n -t "$lpid" iptables -A INPUT -p tcp -m multiport --dports 80,81 -j DROP
nsenter -n -t "$lpid" iptables -A INPUT -p tcp --dport 8080 -j REJECT --reject-with tcp-reset
check "nc $LIP 80 (dropped)"      " rc=1"       timeout 5 nc -w 2 "$LIP" 80
check "nc $LIP 8080 (rejected)"   " rc=1"       timeout 5 nc -w 2 "$LIP" 8080
check "wget $LIP:81 (dropped)"    " rc=143"     timeout 3 wget -q -O - "http://$LIP:81/"
check "nc (no -w) $LIP:80 (dropped)" " rc=143"  timeout 3 nc "$LIP" 80
[ "$fails" -eq 0 ] || die "$fails probe check(s) failed"
log "probe passed"
