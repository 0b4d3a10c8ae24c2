#!/usr/bin/env bash
# Make a local Debian bookworm base image (python3 + venv + pip) with debootstrap and `docker import`,
# for machines where no container registry is reachable. Build the service on it with
#   docker build --build-arg BASE_IMAGE=striate-base:bookworm -t striate .
# The host's extra CA certificates (/usr/local/share/ca-certificates) are trusted inside, so pip works
# behind a TLS-intercepting proxy. Needs root, debootstrap and a running Docker engine.
#
# Environment: BASE_TAG (default striate-base:bookworm), SUITE (bookworm), MIRROR and SECURITY_MIRROR
# (default: the Debian URIs in this machine's apt sources, else deb.debian.org), FORCE=1 to rebuild an
# existing tag, DOCKER (docker client command).
set -euo pipefail

BASE_TAG=${BASE_TAG:-striate-base:bookworm}
SUITE=${SUITE:-bookworm}
DOCKER=${DOCKER:-docker}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates

log() { echo "[docker_base] $*" >&2; }

# The mirror this machine's apt uses (deb822 "URIs:" or one-line "deb [opts] URI suite"):
# $1 is the last path component of the URI (debian or debian-security), $2 the fallback.
host_mirror() {
    local uri
    uri=$(grep -hsE '^(URIs:|deb) ' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
              /etc/apt/sources.list.d/*.list \
          | sed -E 's/^URIs:[[:space:]]+//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
          | awk '{print $1}' | grep -E "/$1/?$" | head -n1 || true)
    echo "${uri:-$2}"
}
MIRROR=${MIRROR:-$(host_mirror debian http://deb.debian.org/debian)}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(host_mirror debian-security http://deb.debian.org/debian-security)}

if [ "${FORCE:-0}" != 1 ] && "$DOCKER" image inspect "$BASE_TAG" >/dev/null 2>&1; then
    log "$BASE_TAG exists (FORCE=1 rebuilds it)"
    exit 0
fi
command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install debootstrap"; exit 1; }
[ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }

ROOTFS=$(mktemp -d /tmp/striate-rootfs.XXXXXX)
STEPLOG=$ROOTFS.log
cleanup() {
    # debootstrap may leave /proc or /sys mounted inside the tree: unmount before deleting it.
    for m in proc sys dev/pts dev; do umount -l "$ROOTFS/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT
# Run a step quietly; on failure show the end of its output and stop.
step() {
    local what=$1 t0=$SECONDS
    shift
    "$@" >"$STEPLOG" 2>&1 || { tail -30 "$STEPLOG" >&2; log "$what failed (log: $STEPLOG)"; exit 1; }
    log "$what: $((SECONDS - t0)) s"
}

start=$SECONDS
log "debootstrap --variant=minbase $SUITE from $MIRROR (with $PACKAGES)"
step debootstrap debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR"

# Trust the host's extra CA certificates (TLS-intercepting networks), then rebuild the bundle.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
fi
step update-ca-certificates chroot "$ROOTFS" update-ca-certificates

# The same mirrors inside, with the updates and security suites; apply today's fixes.
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE-updates" "$SECURITY_MIRROR" "$SUITE-security" \
    >"$ROOTFS/etc/apt/sources.list"
step "apt-get upgrade" chroot "$ROOTFS" sh -c \
    'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -q && apt-get clean'
rm -f "$STEPLOG"

# Slim the tree: no apt lists, caches, logs, docs or man pages.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/*.log \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/usr/share/locale/*

# pip inside builds uses the system trust store (which now holds the host's CAs), not certifi's.
tar --numeric-owner -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE + $PACKAGES" \
    - "$BASE_TAG" >/dev/null
log "built $BASE_TAG in $((SECONDS - start)) s ($("$DOCKER" image inspect -f '{{.Size}}' "$BASE_TAG" \
    | awk '{printf "%.0f MB", $1 / 1e6}'))"
