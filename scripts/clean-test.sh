#!/usr/bin/env bash
# Remove what tests leave behind: docker containers and networks, and `ip netns` namespaces,
# whose names start with the test prefix (default "egt-"; override with EGT_CLEAN_PREFIX).
# Harmless when there is nothing to remove or docker is not running.
# CAUTION: on a shared machine this also removes other people's running egt-* test objects.
set -euo pipefail

PREFIX=${EGT_CLEAN_PREFIX:-egt-}
[ -n "$PREFIX" ] || { echo "[clean-test] ERROR: empty prefix" >&2; exit 1; }
log() { printf '[clean-test] %s\n' "$*" >&2; }

starts_with_prefix() { awk -v p="$PREFIX" 'index($0, p) == 1'; }

if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
    mapfile -t cs < <(docker ps -a --format '{{.Names}}' | starts_with_prefix)
    if [ "${#cs[@]}" -gt 0 ]; then
        log "removing containers: ${cs[*]}"
        docker rm -f "${cs[@]}" >/dev/null
    fi
    mapfile -t ns < <(docker network ls --format '{{.Name}}' | starts_with_prefix)
    if [ "${#ns[@]}" -gt 0 ]; then
        log "removing networks: ${ns[*]}"
        if ! docker network rm "${ns[@]}" >/dev/null; then
            # dockerd 20.10 can keep a network "with active endpoints" after its last
            # container is gone (seen after the benchmark's dfw phase); only a restart frees it.
            log "a network could not be removed; if dockerd says it has active endpoints but" \
                "no container is on it, restart dockerd (systemctl restart docker, or stop it and run" \
                "scripts/services.sh) and run again"
            exit 1
        fi
    fi
else
    log "docker not answering: skipping containers and networks"
fi

if command -v ip >/dev/null 2>&1; then
    mapfile -t nss < <(ip netns list 2>/dev/null | awk '{print $1}' | starts_with_prefix)
    for n in "${nss[@]}"; do
        log "removing netns $n"
        ip netns del "$n"
    done
fi
log "done"
