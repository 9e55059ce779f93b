#!/usr/bin/env bash
# Installs the Debian package in a fresh Debian 12 chroot, removes it, purges it, and checks
# that the chroot is as it was: `make deb-test` (after `make deb`), as root.
#   scripts/deb-test.sh [target/debian/egresstrator_<version>-1_<arch>.deb]
# The chroot is `debootstrap --variant=minbase --include=systemd,man-db bookworm` (systemd for
# `systemd-analyze verify` and `systemctl is-enabled`, man-db for the unit's man: links),
# kept as a tarball in $CACHE_DIR and reused; EGRESSTRATOR_DEB_TEST_REFRESH=1 makes a new one. Dependencies come from $MIRROR.
# Nothing on the host changes except the cache and a temporary directory, removed at exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }
step() { echo "deb-test: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and chroot need it)"
# shellcheck source=scripts/debian-rootfs.sh
. scripts/debian-rootfs.sh

DEB=${1:-}
if [ -z "$DEB" ]; then
    DEB=$(ls -t target/debian/egresstrator_*.deb 2>/dev/null | head -n 1 || true)
fi
[ -n "$DEB" ] && [ -f "$DEB" ] || fail "no package: run make deb (or give the .deb's path)"
step "package $DEB ($(du -h "$DEB" | cut -f1))"

ROOT=$(mktemp -d /var/tmp/egresstrator-deb-test.XXXXXX)
chmod 0755 "$ROOT"
cleanup() {
    for m in "$ROOT/proc" "$ROOT/sys"; do
        if mountpoint -q "$m"; then umount -l "$m" || true; fi
    done
    rm -rf --one-file-system -- "$ROOT"
}
trap cleanup EXIT

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
# No /dev/pts in the chroot: dpkg without a pty for apt's log.
APT=(apt-get -q -o Dpkg::Use-Pty=0)

# --- A fresh Debian 12 -------------------------------------------------------------------------
debian_rootfs "$ROOT"

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Every installed Debian system has an /etc/hosts (the installer writes it); debootstrap does
# not, and netbase (a dependency of iptables) creates one in its postinst and keeps it.
[ -e "$ROOT/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
# A chroot must not start services (there is no systemd running in it anyway).
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
cp "$DEB" "$ROOT/root/"
PKG=/root/$(basename "$DEB")
in_root "${APT[@]}" update >/dev/null || fail "apt-get update in the chroot failed ($MIRROR)"

# Every path with its type and mode, minus what the package manager itself keeps, and /run
# (a tmpfs on a real host: systemd-analyze below writes /run/systemd/systemd-units-load).
snapshot() {
    (cd "$ROOT" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run \
        -o -path ./var/lib/dpkg -o -path ./var/lib/apt -o -path ./var/cache -o -path ./var/log \
        -o -path ./tmp \) -prune -o -printf '%p %y %m\n' | sort)
}
snapshot >"$ROOT.before"
trap 'rm -f "$ROOT.before" "$ROOT.after"; cleanup' EXIT

# --- Install -----------------------------------------------------------------------------------
step "apt-get install ./$(basename "$DEB") (dependencies from the mirror)"
in_root "${APT[@]}" install -y --no-install-recommends "$PKG" >"$ROOT.install.log" 2>&1 ||
    { cat "$ROOT.install.log" >&2; rm -f "$ROOT.install.log"; fail "apt-get install failed (log above)"; }
rm -f "$ROOT.install.log"
status=$(in_root dpkg-query -W -f='${Status}' egresstrator)
[ "$status" = "install ok installed" ] || fail "dpkg status after install: $status"
step "Depends: $(in_root dpkg-query -W -f='${Depends}' egresstrator)"

mapfile -t listed < <(in_root dpkg -L egresstrator)
[ "${#listed[@]}" -gt 0 ] || fail "dpkg -L egresstrator lists nothing"
files=()
for p in "${listed[@]}"; do
    [ -e "$ROOT$p" ] || [ -L "$ROOT$p" ] || fail "dpkg -L lists $p, which is missing"
    [ -d "$ROOT$p" ] && [ ! -L "$ROOT$p" ] || files+=("$p")
done

UNIT=
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$ROOT$d/egresstrator.service" ]; then UNIT=$d/egresstrator.service; break; fi
done
[ -n "$UNIT" ] || fail "egresstrator.service not in /usr/lib/systemd/system or /lib/systemd/system"
for p in /usr/bin/egresstrator /usr/bin/egresstrator-runc /etc/default/egresstrator \
    /usr/share/man/man1/egresstrator.1.gz /usr/share/man/man8/egresstrator-runc.8.gz \
    /usr/share/bash-completion/completions/egresstrator /usr/share/zsh/vendor-completions/_egresstrator \
    /usr/share/fish/vendor_completions.d/egresstrator.fish; do
    [ -f "$ROOT$p" ] || fail "$p not installed"
done
for p in "$ROOT"/usr/share/man/man*/egresstrator*; do
    gzip -t "$p" || fail "${p#"$ROOT"} is not a valid gzip file"
done
[ "$(in_root stat -c %a /usr/bin/egresstrator-runc)" = 755 ] || fail "egresstrator-runc is not 0755"
in_root ldd /usr/bin/egresstrator-runc 2>&1 | grep -qE 'statically linked|not a dynamic executable' ||
    fail "/usr/bin/egresstrator-runc is not statically linked: $(in_root ldd /usr/bin/egresstrator-runc 2>&1)"
conffiles=$(in_root dpkg-query -W -f='${Conffiles}' egresstrator)
grep -q '^ /etc/default/egresstrator ' <<<"$conffiles" || fail "/etc/default/egresstrator is not a conffile: '$conffiles'"
version=$(in_root egresstrator --version) || fail "egresstrator --version failed in the chroot"
step "egresstrator --version: $version"
grep -qx 'ExecStart=/usr/bin/egresstrator run $EGRESSTRATOR_ARGS' "$ROOT$UNIT" ||
    fail "$UNIT: ExecStart does not run /usr/bin/egresstrator"
in_root systemd-analyze --version >/dev/null 2>&1 || fail "systemd-analyze missing in the chroot (the cached tarball should hold systemd and man-db: EGRESSTRATOR_DEB_TEST_REFRESH=1)"
in_root systemd-analyze verify "$UNIT" || fail "systemd-analyze verify $UNIT"
enabled=$(in_root systemctl is-enabled egresstrator.service 2>&1 || true)
[ "$enabled" = disabled ] || fail "the unit should be installed disabled; systemctl is-enabled says: $enabled"
# An administrator enables it (systemctl works offline in a chroot): dpkg -P must undo that too.
in_root systemctl enable egresstrator.service >/dev/null 2>&1 || fail "systemctl enable egresstrator failed in the chroot"
enabled=$(in_root systemctl is-enabled egresstrator.service 2>&1 || true)
[ "$enabled" = enabled ] || fail "systemctl enable egresstrator did not enable it: $enabled"
step "installed: ${#files[@]} files, $UNIT verified and disabled (then enabled by hand), /etc/default/egresstrator a conffile"

# --- Remove: everything but the conffile goes -------------------------------------------------
in_root dpkg -r egresstrator >/dev/null || fail "dpkg -r egresstrator failed"
status=$(in_root dpkg-query -W -f='${Status}' egresstrator)
[ "$status" = "deinstall ok config-files" ] || fail "dpkg status after dpkg -r: $status"
for p in "${files[@]}"; do
    if [ "$p" = /etc/default/egresstrator ]; then
        [ -f "$ROOT$p" ] || fail "dpkg -r removed the conffile $p"
    elif [ -e "$ROOT$p" ] || [ -L "$ROOT$p" ]; then
        fail "dpkg -r left $p"
    fi
done
step "dpkg -r: every file gone but the conffile /etc/default/egresstrator"

# --- Purge: nothing left -----------------------------------------------------------------------
in_root dpkg -P egresstrator >/dev/null || fail "dpkg -P egresstrator failed"
[ ! -e "$ROOT/etc/default/egresstrator" ] || fail "dpkg -P left /etc/default/egresstrator"
if in_root dpkg-query -W -f='${Status}' egresstrator >/dev/null 2>&1; then
    fail "dpkg still knows egresstrator after dpkg -P: $(in_root dpkg-query -W -f='${Status}' egresstrator)"
fi
# The dependencies apt installed for it (marked automatic) go too, then the chroot must be as
# it was before the install.
in_root "${APT[@]}" autoremove --purge -y >/dev/null || fail "apt-get autoremove --purge failed"
snapshot >"$ROOT.after"
if ! diff -u "$ROOT.before" "$ROOT.after" >"$ROOT.diff"; then
    cat "$ROOT.diff" >&2; rm -f "$ROOT.diff"
    fail "the chroot after dpkg -r, dpkg -P and autoremove differs from before the install (diff above: - before, + after)"
fi
rm -f "$ROOT.diff"
# Not searched: apt's and dpkg's state, /root (the .deb copied in), and /var/cache, where man
# pages formatted for the unit's man: links (systemd-analyze verify) stay as man-db's cat
# pages, as for any package's man page, until man-db's daily job drops them.
left=$(cd "$ROOT" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run \
    -o -path ./var/lib/dpkg -o -path ./var/lib/apt -o -path ./var/cache -o -path ./var/log \
    -o -path ./root \) -prune -o -iname '*egresstrator*' -print)
[ -z "$left" ] || fail "left after purge: $left"
step "dpkg -P and autoremove: the chroot is as before the install"
step "PASS"
