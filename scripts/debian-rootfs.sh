# Sourced by scripts/deb-test.sh and scripts/systemd-test.sh: a fresh Debian 12 root file
# system, `debootstrap --variant=minbase --include=systemd,man-db bookworm`, kept as a tarball
# in $CACHE_DIR and reused (EGRESSTRATOR_DEB_TEST_REFRESH=1 makes a new one). Packages come
# from $MIRROR. The caller defines fail() and step().

CACHE_DIR=${EGRESSTRATOR_DEB_TEST_CACHE:-/var/cache/egresstrator-deb-test}
MIRROR=${EGRESSTRATOR_DEB_TEST_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
TARBALL=$CACHE_DIR/$SUITE-minbase-systemd-man-db-$(dpkg --print-architecture).tar.gz

# debian_rootfs ROOT: fills the empty directory ROOT.
debian_rootfs() {
    local root=$1 start
    for tool in debootstrap chroot tar gzip; do
        command -v "$tool" >/dev/null || fail "$tool missing: apt-get install -y debootstrap (brings the rest)"
    done
    if [ -f "$TARBALL" ] && [ -z "${EGRESSTRATOR_DEB_TEST_REFRESH:-}" ]; then
        step "Debian 12 root from the cached $TARBALL"
        tar -xpzf "$TARBALL" -C "$root"
        return
    fi
    step "debootstrap --variant=minbase --include=systemd,man-db $SUITE from $MIRROR (cached afterwards)"
    start=$SECONDS
    debootstrap --variant=minbase --include=systemd,man-db "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 ||
        { tail -n 30 "$root.log" >&2; rm -f "$root.log"; fail "debootstrap failed (log above)"; }
    rm -f "$root.log"
    chroot "$root" apt-get clean
    install -d -m 0755 "$CACHE_DIR"
    tar -cpzf "$TARBALL.tmp.$$" -C "$root" . && mv "$TARBALL.tmp.$$" "$TARBALL"
    step "debootstrap took $((SECONDS - start)) s; cached as $TARBALL"
}
