#!/usr/bin/env bash
# Boots a fresh Debian 12 under systemd (PID 1 of a container with every capability and its own
# dockerd, since this machine has no systemd), installs the Debian package there as an operator would
# and checks that its unit runs a working agent: `make systemd-test` (after `make deb`), as root.
#   scripts/systemd-test.sh [target/debian/egresstrator_<version>-1_<arch>.deb]
#
# Inside the booted system, in order:
#   1. apt-get install ./egresstrator_*.deb; systemctl enable --now egresstrator returns only
#      once the agent sent READY=1 (Type=notify), under the unit's full sandbox; then real
#      enforcement: an enabled container reaches the port its ACL allows and is refused the
#      other one; a container that is not enabled reaches both (the control);
#   2. Restart=always: SIGKILL of the agent, systemd starts it again, enforcement holds;
#   3. the watchdog: with WatchdogSec=4s (a drop-in) the agent stays up while healthy, and is
#      killed and restarted by systemd once /healthz fails (dockerd stopped), the control that
#      shows the pings are conditional;
#   4. egresstrator runtime install, a reload of dockerd, and egresstrator doctor: every
#      check passes;
#   5. systemd-analyze security: the exposure score, compared with the README's;
#   6. apt-get purge: the unit stopped and gone.
#
# The system is built from scripts/debian-rootfs.sh's cached root with docker.io and the
# package's dependencies added (no network inside the test container: --network none), and
# imported as the image egt-systemd-test:<recipe hash>, reused while the recipe is unchanged.
# Consul runs inside as a dev agent (this host's consul binary), the test image is this host's
# egresstrator-test:latest (make image). Nothing on the host changes except that image, the
# cache and a temporary directory; the container and its volume are removed at exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() { echo "systemd-test: FAIL: $*" >&2; exit 1; }
step() { echo "systemd-test: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (chroot and a container with every capability need it)"
# shellcheck source=scripts/debian-rootfs.sh
. scripts/debian-rootfs.sh
docker info >/dev/null 2>&1 || fail "dockerd not reachable: make services"
TEST_IMAGE=egresstrator-test:latest
docker image inspect "$TEST_IMAGE" >/dev/null 2>&1 || fail "$TEST_IMAGE missing: make image"
CONSUL=$(command -v consul) || fail "consul missing: scripts/prereqs.sh"

DEB=${1:-}
if [ -z "$DEB" ]; then
    DEB=$(ls -t target/debian/egresstrator_*.deb 2>/dev/null | head -n 1 || true)
fi
[ -n "$DEB" ] && [ -f "$DEB" ] || fail "no package: run make deb (or give the .deb's path)"
DEB=$(realpath "$DEB")
step "package $DEB"

NAME=egt-systemd-$$
WORK=$(mktemp -d /var/tmp/egresstrator-systemd-test.XXXXXX)
cleanup() {
    # The inner containers first: their cgroups live in this host's hierarchies.
    docker exec "$NAME" sh -c 'docker rm -f $(docker ps -aq) >/dev/null 2>&1' >/dev/null 2>&1 || true
    docker rm -f -v "$NAME" >/dev/null 2>&1 || true
    for m in "$WORK/root/proc" "$WORK/root/sys"; do
        if mountpoint -q "$m"; then umount -l "$m" || true; fi
    done
    rm -rf --one-file-system -- "$WORK"
}
# EGRESSTRATOR_SYSTEMD_TEST_KEEP=1 leaves the container running, to look inside after a failure.
[ -n "${EGRESSTRATOR_SYSTEMD_TEST_KEEP:-}" ] && trap 'rm -rf --one-file-system -- "$WORK"; echo "systemd-test: kept $NAME"' EXIT ||
    trap cleanup EXIT

# --- The image: Debian 12 with systemd, docker.io and the package's dependencies -----------------
PACKAGES=(docker.io containerd runc tini nftables iptables conntrack iproute2 libnftables1 curl ca-certificates dbus procps)
RECIPE=$(
    {
        printf '%s\n' "${PACKAGES[@]}"
        sed -n '/^# --- The image/,/^# --- End of the image/p' "$0"
        sha256sum "$CONSUL" | cut -d' ' -f1
        docker image inspect -f '{{.Id}}' "$TEST_IMAGE"
    } | sha256sum | cut -c1-12
)
IMAGE=egt-systemd-test:$RECIPE
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    step "image $IMAGE (cached)"
else
    start=$SECONDS
    ROOT=$WORK/root
    mkdir -m 0755 "$ROOT"
    debian_rootfs "$ROOT"
    mount -t proc proc "$ROOT/proc"
    mount -t sysfs sysfs "$ROOT/sys"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    [ -e "$ROOT/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
    # Nothing may start in the chroot; the services are enabled and start when it boots.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
    APT=(apt-get -q -o Dpkg::Use-Pty=0)
    in_root "${APT[@]}" update >/dev/null || fail "apt-get update in the chroot failed ($MIRROR)"
    step "apt-get install ${PACKAGES[*]}"
    in_root "${APT[@]}" install -y --no-install-recommends "${PACKAGES[@]}" >"$WORK/apt.log" 2>&1 ||
        { tail -n 30 "$WORK/apt.log" >&2; fail "apt-get install failed (log above)"; }
    in_root apt-get clean
    rm -f "$ROOT/usr/sbin/policy-rc.d" "$ROOT/etc/resolv.conf"
    # A container's systemd: no getty on a console that is not there, no udev.
    for unit in getty@tty1.service console-getty.service systemd-udevd.service \
        systemd-udev-trigger.service; do
        ln -sf /dev/null "$ROOT/etc/systemd/system/$unit"
    done
    install -m 0755 "$CONSUL" "$ROOT/usr/local/bin/consul"
    docker save "$TEST_IMAGE" -o "$ROOT/root/test-image.tar"
    umount "$ROOT/proc" "$ROOT/sys"
    tar -C "$ROOT" -c . | docker import \
        --change 'ENV container=docker' \
        --change 'CMD ["/lib/systemd/systemd"]' - "$IMAGE" >/dev/null
    rm -rf --one-file-system -- "$ROOT"
    step "image $IMAGE built in $((SECONDS - start)) s"
fi
# --- End of the image ------------------------------------------------------------------------

# --- Boot --------------------------------------------------------------------------------------
# What --privileged would give, which systemd (its mounts, its units' sandboxes) and the inner
# dockerd need: every capability (but CAP_SYS_RESOURCE, which this machine's bounding set
# lacks, so --privileged itself fails: "unable to apply caps"), no seccomp or AppArmor
# profile, /proc/sys writable, and the cgroup hierarchies writable (systemd keeps to the
# container's own cgroup; the inner containers' cgroups are removed with them, below).
# --network none: nothing inside reaches beyond this container; the inner dockerd makes its
# own bridge in the container's namespace. /var/lib/docker is a volume (overlay2 cannot sit
# on the container's own overlay).
docker run -d --name "$NAME" --network none --stop-signal SIGRTMIN+3 \
    --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
    --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
    --tmpfs /run --tmpfs /run/lock --tmpfs /tmp -v /var/lib/docker \
    -v "$DEB:/root/$(basename "$DEB"):ro" "$IMAGE" >/dev/null
in_box() { docker exec "$NAME" "$@"; }
state=
for _ in $(seq 1 120); do
    state=$(in_box systemctl is-system-running 2>/dev/null || true)
    case $state in running | degraded) break ;; esac
    sleep 0.5
done
case $state in
    running) ;;
    degraded) step "systemd degraded; failed units: $(in_box systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')" ;;
    *) docker logs "$NAME" 2>&1 | tail -n 30 >&2; fail "systemd did not boot: is-system-running says '$state'" ;;
esac
step "systemd $(in_box systemctl --version | head -n 1 | cut -d' ' -f2) booted as PID 1 ($state)"
# On a host, systemd makes / shared at boot, so that the mounts dockerd makes later (each
# container's /var/run/docker/netns/<id>) reach units with private mounts, as the agent's;
# in a container it leaves propagation to the container manager, and Docker's is private.
# Make it as on a host. (Without it, the agent now enters containers through
# /proc/<pid>/ns/net and says so; before, it took them for exited.)
in_box mount --make-rshared /
in_box sh -c 'for i in $(seq 1 60); do docker info >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1' ||
    fail "the inner dockerd did not start: $(in_box systemctl status docker --no-pager 2>&1 | tail -n 20)"
in_box docker load -q -i /root/test-image.tar >/dev/null
in_box systemd-run --quiet --unit=consul-dev /usr/local/bin/consul agent -dev -client=127.0.0.1 -bind=127.0.0.1
in_box sh -c 'for i in $(seq 1 60); do consul kv get -recurse >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1' ||
    fail "Consul did not start: $(in_box journalctl -u consul-dev --no-pager | tail -n 20)"

# A listener on 80 and 8080 (never enabled), and the ACL that allows 80 only.
in_box docker network create --subnet 10.232.0.0/24 egt >/dev/null
in_box docker run -d --name server --network egt --ip 10.232.0.10 "$TEST_IMAGE" \
    sh -c 'nc -ll -p 8080 -e echo ok8080 & exec nc -ll -p 80 -e echo ok' >/dev/null
in_box consul kv put egress/acl/web 10.232.0.10:tcp/80 >/dev/null

# --- 1. Install and start, as an operator ------------------------------------------------------
in_box apt-get -q -o Dpkg::Use-Pty=0 install -y --no-install-recommends "/root/$(basename "$DEB")" \
    >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log" >&2; fail "apt-get install ./$(basename "$DEB") failed"; }
[ "$(in_box systemctl is-enabled egresstrator 2>&1 || true)" = disabled ] ||
    fail "the unit should be installed disabled: $(in_box systemctl is-enabled egresstrator 2>&1)"
t0=$(date +%s%N)
in_box systemctl enable --now egresstrator >/dev/null 2>&1 ||
    fail "systemctl enable --now egresstrator failed: $(in_box journalctl -u egresstrator --no-pager | tail -n 30)"
ready_ms=$((($(date +%s%N) - t0) / 1000000))
[ "$(in_box systemctl is-active egresstrator)" = active ] || fail "egresstrator is not active"
unit_prop() { in_box systemctl show -P "$1" egresstrator; }
[ "$(unit_prop Type)" = notify ] || fail "Type is $(unit_prop Type), not notify"
step "systemctl enable --now egresstrator: active (READY=1) after $ready_ms ms, main pid $(unit_prop MainPID)"

probe() { # probe CONTAINER PORT EXPECTED-TEXT: 0 when the listener answered
    in_box docker exec "$1" timeout 5 nc -w 2 10.232.0.10 "$2" </dev/null 2>/dev/null | grep -qx "$3"
}
in_box docker run -d --init --name client --network egt -e EGRESSTRATOR_ENABLE=1 -e EGRESSTRATOR_ACL=web \
    "$TEST_IMAGE" sleep 3600 >/dev/null
in_box docker run -d --init --name plain --network egt "$TEST_IMAGE" sleep 3600 >/dev/null
# `egresstrator status`: CONTAINER NAME POSTURE ACLS APPLIED ...; applied is "-" until loaded.
enforced() { in_box egresstrator status 2>/dev/null | awk '$2 == "client" && $3 == "allowlist" && $4 == "web" && $5 != "-" { ok = 1 } END { exit !ok }'; }
check_enforced() { # what: the client is enforced, real traffic says so, the control is not
    local what=$1
    for _ in $(seq 1 40); do enforced && break; sleep 0.25; done
    enforced || fail "$what: the client is not enforced; status: $(in_box egresstrator status 2>&1)
the agent's journal: $(in_box journalctl -u egresstrator --no-pager | tail -n 30)"
    probe client 80 ok || fail "$what: the enabled client cannot reach the port its ACL allows (80)"
    if probe client 8080 ok8080; then fail "$what: the enabled client reached 8080, which no ACL allows"; fi
    probe plain 8080 ok8080 || fail "$what: the control (not enabled) cannot reach 8080: the probe is broken"
}
check_enforced "after enable --now"
if in_box journalctl -u egresstrator --no-pager | grep -q 'holds no network namespace here'; then
    fail "the unit's mount namespace does not see dockerd's netns mounts: $(in_box journalctl -u egresstrator --no-pager | grep 'holds no network namespace here')"
fi
step "enforced: the enabled container reaches 80 and is refused 8080; the one not enabled reaches 8080"

# --- 2. Restart=always -------------------------------------------------------------------------
pid=$(unit_prop MainPID)
restarts=$(unit_prop NRestarts)
in_box sh -c "kill -9 $pid"
for _ in $(seq 1 40); do
    new=$(unit_prop MainPID)
    [ "$(in_box systemctl is-active egresstrator)" = active ] && [ "$new" != "$pid" ] && [ "$new" != 0 ] && break
    sleep 0.25
done
[ "$(unit_prop NRestarts)" -gt "$restarts" ] || fail "SIGKILL of the agent: systemd did not restart it (NRestarts $(unit_prop NRestarts))"
check_enforced "after the agent's SIGKILL"
step "Restart=always: SIGKILLed pid $pid, systemd started pid $(unit_prop MainPID); still enforced"

# --- 3. The watchdog ---------------------------------------------------------------------------
[ "$(unit_prop WatchdogUSec)" = 30s ] || fail "WatchdogSec is $(unit_prop WatchdogUSec), not 30s"
in_box mkdir -p /etc/systemd/system/egresstrator.service.d
in_box sh -c 'printf "[Service]\nWatchdogSec=4s\n" >/etc/systemd/system/egresstrator.service.d/watchdog.conf'
in_box systemctl daemon-reload
in_box systemctl restart egresstrator
pid=$(unit_prop MainPID)
restarts=$(unit_prop NRestarts)
sleep 10
[ "$(unit_prop MainPID)" = "$pid" ] && [ "$(unit_prop NRestarts)" = "$restarts" ] ||
    fail "healthy, yet the 4 s watchdog restarted the agent: $(in_box journalctl -u egresstrator --no-pager | grep -i watchdog | tail -n 5)"
step "watchdog: healthy agent pid $pid fed a 4 s watchdog for 10 s"
# The control: dockerd gone, /healthz fails, the pings stop and systemd acts.
in_box systemctl stop docker.socket docker.service
fired=
for _ in $(seq 1 60); do
    if in_box journalctl -u egresstrator --no-pager | grep -q 'Watchdog timeout'; then fired=1; break; fi
    sleep 0.5
done
[ -n "$fired" ] || fail "dockerd stopped (so /healthz is 503), yet the watchdog never fired: $(in_box journalctl -u egresstrator --no-pager | tail -n 10)"
step "watchdog: with dockerd stopped the agent stopped pinging and systemd killed it ($(in_box journalctl -u egresstrator --no-pager | grep -m1 -o 'Watchdog timeout.*'))"
in_box rm -rf /etc/systemd/system/egresstrator.service.d
in_box systemctl daemon-reload
in_box systemctl start docker
in_box sh -c 'for i in $(seq 1 60); do docker info >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1' ||
    fail "the inner dockerd did not come back"
in_box docker start server client plain >/dev/null
in_box systemctl restart egresstrator || fail "egresstrator did not start again with dockerd back: $(in_box journalctl -u egresstrator --no-pager | tail -n 20)"
check_enforced "after dockerd and the agent came back"
step "dockerd back: the agent started again and enforces"

# --- 4. The shim registered, and doctor ---------------------------------------------------------
in_box egresstrator runtime install >"$WORK/runtime.log" 2>&1 ||
    { cat "$WORK/runtime.log" >&2; fail "egresstrator runtime install failed"; }
in_box systemctl reload docker
in_box docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' | grep -qw egresstrator ||
    fail "dockerd does not list the runtime egresstrator after runtime install and a reload"
if ! in_box egresstrator doctor >"$WORK/doctor.log" 2>&1; then
    cat "$WORK/doctor.log" >&2
    fail "egresstrator doctor failed on the booted system (above)"
fi
step "egresstrator runtime install, then doctor: $(tail -n 1 "$WORK/doctor.log")"

# --- 5. The sandbox's score ----------------------------------------------------------------------
score=$(in_box systemd-analyze security egresstrator.service --no-pager | sed -n 's/.*Overall exposure level for egresstrator.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "systemd-analyze security gave no score"
readme=$(sed -n 's/.*security` rates it \([0-9.]*\) .*/\1/p' README.md | head -n 1)
[ "$score" = "$readme" ] || fail "systemd-analyze security rates the unit $score; the README says $readme"
step "systemd-analyze security: $score, as the README says"

# --- 6. Purge ------------------------------------------------------------------------------------
in_box apt-get -q -o Dpkg::Use-Pty=0 purge -y egresstrator >/dev/null 2>&1 || fail "apt-get purge egresstrator failed"
in_box systemctl daemon-reload
active=$(in_box systemctl is-active egresstrator 2>&1 || true)
[ "$active" = inactive ] || fail "after purge the unit is '$active'"
in_box test ! -e /usr/bin/egresstrator || fail "after purge /usr/bin/egresstrator is still there"
step "apt-get purge: the agent stopped and its files gone"
step "PASS"
