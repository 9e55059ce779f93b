#!/usr/bin/env bash
# Install everything egresstrator's build and tests need on a Debian 12 (bookworm) machine.
#
# Idempotent: each step checks first (command -v / dpkg -s) and is skipped when already done;
# `apt-get update` runs at most once, and only when something must be installed.
# Installs:
#   - apt: docker.io nftables iptables conntrack libnftables-dev busybox-static iproute2
#          openssl curl jq (+ pkg-config, procps (pgrep), make, stunnel4, socat, gcc, libc6-dev;
#          gcc + libc6-dev (static glibc, libc.a) compile the test image's rawsend/udpsink with
#          `gcc -static`, see scripts/test-image.sh)
#          podman netavark aardvark-dns (Podman 4.3 for tests/integration/podman.rs; netavark and
#          aardvark-dns are only Recommends of podman, named here so that --no-install-recommends
#          gives the same network backend, netavark, rather than CNI)
#   - consul (Debian 12 has none): the bullseye package's static binary, fetched through the
#     machine's own Debian mirror with a PRIVATE apt state (system sources untouched),
#     installed as /usr/local/bin/consul.
# Checks (never installs): the Rust toolchain (cargo, rustfmt, clippy).
set -euo pipefail

log() { printf '[prereqs] %s\n' "$*" >&2; }
die() { printf '[prereqs] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages)"

export DEBIAN_FRONTEND=noninteractive

# --- Rust toolchain: must already be there (no toolchain download is possible here) ---------
if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 \
    || die "cargo not found (neither on PATH nor in ~/.cargo/bin); install the Rust toolchain first"
cargo fmt --version >/dev/null 2>&1 || log "WARNING: rustfmt (cargo fmt) missing: 'make lint' will fail"
cargo clippy --version >/dev/null 2>&1 || log "WARNING: clippy (cargo clippy) missing: 'make lint' will fail"
log "rust: $(cargo --version)"

# --- apt packages ----------------------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        apt-get update -q >/dev/null
        APT_UPDATED=1
    fi
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

PKGS=(docker.io nftables iptables conntrack libnftables-dev busybox-static iproute2 openssl curl jq
      pkg-config procps make stunnel4 socat gcc g++ libc6-dev man-db systemd debootstrap
      podman netavark aardvark-dns)
missing=()
for p in "${PKGS[@]}"; do
    pkg_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    log "apt-get install ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "apt packages: all present"
fi

# Sanity: the things the tests actually call.
for c in dockerd docker nft iptables conntrack ip openssl curl jq pgrep make stunnel socat nsenter tar gcc man systemd-analyze podman; do
    command -v "$c" >/dev/null 2>&1 || die "'$c' still not on PATH after installing packages"
done
[ -x /bin/busybox ] || die "/bin/busybox missing although busybox-static is installed"

# --- consul ----------------------------------------------------------------------------------
mirror_uri() {
    local uri=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        # deb822: first URIs: line that is not the security archive.
        uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    elif [ -r /etc/apt/sources.list ]; then
        # one-line format: "deb [opts ...] URI suite comp..."; skip an options block.
        uri=$(awk '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($i !~ /security/) { print $i; exit }
            }' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || die "could not find the Debian mirror URI in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    printf '%s\n' "$uri"
}

install_consul() {
    local uri d o
    uri=$(mirror_uri)
    d=$(mktemp -d /tmp/egt-consul.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$d'" EXIT
    mkdir -p "$d/lists/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bullseye main" >"$d/sources.list"
    # Private lists + sources; the binary package caches are disabled so the system's
    # /var/cache/apt/*.bin are not rebuilt from bullseye lists.
    o=(-o "Dir::State::Lists=$d/lists" -o "Dir::Etc::SourceList=$d/sources.list"
       -o "Dir::Etc::SourceParts=/dev/null"
       -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
       -o "APT::Sandbox::User=root")  # the mktemp dir is 0700: _apt could not write there
    log "fetching consul from $uri bullseye (private apt state in $d)"
    apt-get "${o[@]}" update -q >/dev/null
    (cd "$d" && apt-get "${o[@]}" download consul >/dev/null)
    dpkg -x "$d"/consul_*.deb "$d/x"
    install -m 755 "$d/x/usr/bin/consul" /usr/local/bin/consul
    rm -rf "$d"
    trap - EXIT
}

if command -v consul >/dev/null 2>&1 && consul version >/dev/null 2>&1; then
    log "consul present: $(consul version | head -n1)"
else
    install_consul
    /usr/local/bin/consul version >/dev/null 2>&1 || die "installed /usr/local/bin/consul does not run"
    log "consul installed: $(/usr/local/bin/consul version | head -n1)"
fi

log "done"
