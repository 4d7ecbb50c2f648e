#!/usr/bin/env bash
# docker/base-image.sh — makes `debian:bookworm-slim` in the engine on
# $DOCKER_HOST when it is missing: no registry is needed, the image is
# Debian's minimal bookworm made with debootstrap from the mirror apt uses
# here, trimmed like the official slim image (no docs, man pages, locales,
# apt lists). Every image of docker-compose.yml is built FROM it.
#
# The root file system is kept as var/docker/bookworm-slim.tar, so an engine
# whose data was wiped re-imports it in seconds instead of bootstrapping again.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VAR="$ROOT/var"
[ -L "$VAR" ] && VAR=$(readlink -f "$VAR")
IMAGE=debian:bookworm-slim
TARBALL="$VAR/docker/bookworm-slim.tar"

say() { echo "==> base-image: $*"; }
die() { echo "error: base-image: $*" >&2; exit 1; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE present"
    exit 0
fi

# The mirror apt already uses on this machine (deb822 or one-line sources).
mirror() {
    local m
    m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
    [ -n "$m" ] || m=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
        awk '$3 == "bookworm" {print $2; exit}')
    echo "${m:-http://deb.debian.org/debian}"
}

if [ ! -s "$TARBALL" ]; then
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap not found: make deps installs it"
    dir=$(mktemp -d "$VAR/docker/rootfs.XXXXXX")
    trap 'rm -rf "$dir"' EXIT
    m=$(mirror)
    say "debootstrap --variant=minbase bookworm from $m (about a minute; log var/log/debootstrap.log)"
    mkdir -p "$VAR/log"
    debootstrap --variant=minbase bookworm "$dir" "$m" >"$VAR/log/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see var/log/debootstrap.log"
    # As the official slim image: images install with --no-install-recommends
    # and keep no documentation.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
        "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
        "$dir"/usr/share/locale/*
    cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    echo 'APT::Install-Recommends "false";' >"$dir/etc/apt/apt.conf.d/docker-no-recommends"
    # The container's sources: the same mirror, plus security updates.
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
        "$m" "$m" >"$dir/etc/apt/sources.list"
    tar -C "$dir" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
fi
say "importing $TARBALL as $IMAGE"
docker import -c 'CMD ["bash"]' "$TARBALL" "$IMAGE" >/dev/null
say "$IMAGE made"
