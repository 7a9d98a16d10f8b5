#!/usr/bin/env bash
# rootfs.sh OUT.img [PACKAGE...]
#
# Build a read-only ext4 root image for a Mitos template:
#   mmdebstrap --variant=minbase <suite> (+ PACKAGEs) into a temp dir, then
#   mkfs.ext4 -d (no loop device, no mount), sized to the content plus margin.
#
#   rootfs.sh /var/cache/mitos/base.img                # template "base"
#   rootfs.sh /var/cache/mitos/python.img python3      # template "python"
#
# Environment:
#   MITOS_SUITE          Debian suite (default bookworm)
#   MITOS_MIRRORS        apt source lines separated by "|", e.g.
#                        "deb http://deb.debian.org/debian bookworm main".
#                        Default: the host's own apt sources for that suite
#                        (read with `apt-get indextargets`), else
#                        deb.debian.org + updates + security.
#   MITOS_KEEP_DOCS=1    keep /usr/share/{doc,man,info,locale} (dropped by default)
#   MITOS_ROOTFS_MARGIN_MB  free space left in the image (default 16)
#   MITOS_ROOTFS_OVERLAY  a directory copied over the root after the packages
#                        (owned by root; e.g. guest/interpreter/rootfs)
#
# Needs root (mmdebstrap root mode; mkfs.ext4 -d keeps the tree's owners).
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'rootfs.sh: error: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: $0 OUT.img [PACKAGE...]"
OUT=$1; shift
PACKAGES=("$@")
SUITE=${MITOS_SUITE:-bookworm}

[ "$(id -u)" = 0 ] || die "must run as root"
for tool in mmdebstrap mkfs.ext4 du find; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done
case "$OUT" in */) die "OUT.img must be a file path" ;; esac
mkdir -p "$(dirname "$OUT")"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/mitos-rootfs.XXXXXX")
cleanup() {
  set +e  # (set -e would stop this handler at the first non-match of grep)
  # mmdebstrap unmounts what it mounted, but never follow a leftover mount.
  if command -v findmnt >/dev/null; then
    findmnt -rn -o TARGET | grep -F "$TMP/" | sort -r | while read -r m; do umount -l "$m"; done
  fi
  rm -rf --one-file-system "$TMP"
}
trap cleanup EXIT

# --- apt sources -------------------------------------------------------------
MIRRORS=()
if [ -n "${MITOS_MIRRORS:-}" ]; then
  IFS='|' read -r -a MIRRORS <<<"$MITOS_MIRRORS"
else
  # The host's own sources for this suite (same URIs as the host's apt),
  # e.g. "deb http://deb.debian.org/debian/ bookworm main".
  if command -v apt-get >/dev/null; then
    while read -r uri rel comp; do
      case "$rel" in
        "$SUITE"|"$SUITE"-updates|"$SUITE"-security) MIRRORS+=("deb $uri $rel $comp") ;;
      esac
    done < <(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
               'Created-By: Packages' 2>/dev/null | sort -u)
  fi
  if [ ${#MIRRORS[@]} -eq 0 ]; then
    MIRRORS=("deb http://deb.debian.org/debian $SUITE main"
             "deb http://deb.debian.org/debian $SUITE-updates main"
             "deb http://deb.debian.org/debian-security $SUITE-security main")
  fi
fi
for m in "${MIRRORS[@]}"; do log "apt source: $m"; done

# --- mmdebstrap ----------------------------------------------------------------
# Only what was asked for and its hard dependencies (as `apt-get install
# --no-install-recommends` in a Dockerfile): recommends would pull compilers,
# SciPy and Boost headers into a code-interpreter image.
ARGS=(--mode=root --variant=minbase --format=directory --aptopt='APT::Install-Recommends "false"')
if [ ${#PACKAGES[@]} -gt 0 ]; then
  ARGS+=("--include=$(IFS=,; echo "${PACKAGES[*]}")")
fi
if [ "${MITOS_KEEP_DOCS:-0}" != 1 ]; then
  ARGS+=(--dpkgopt='path-exclude=/usr/share/man/*'
         --dpkgopt='path-exclude=/usr/share/info/*'
         --dpkgopt='path-exclude=/usr/share/doc/*'
         --dpkgopt='path-include=/usr/share/doc/*/copyright'
         --dpkgopt='path-exclude=/usr/share/locale/*'
         --dpkgopt='path-include=/usr/share/locale/locale.alias')
fi
# Files the guest expects; the agent sets the real hostname at boot/fork.
# A sandbox is disposable: `pip install` works as in Docker's python images
# (no PEP 668 marker), so agents need no --break-system-packages.
ARGS+=(--customize-hook='echo mitos > "$1/etc/hostname"'
       --customize-hook='printf "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tmitos\n" > "$1/etc/hosts"'
       --customize-hook='rm -f "$1/etc/resolv.conf"; : > "$1/etc/resolv.conf"'
       --customize-hook='mkdir -p "$1/etc/mitos"; { echo "suite='"$SUITE"'"; echo "packages='"${PACKAGES[*]:-}"'"; echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; } > "$1/etc/mitos/image"'
       --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'
       --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log')

if [ -n "${MITOS_ROOTFS_OVERLAY:-}" ]; then
  [ -d "$MITOS_ROOTFS_OVERLAY" ] || die "MITOS_ROOTFS_OVERLAY is not a directory: $MITOS_ROOTFS_OVERLAY"
  case "$MITOS_ROOTFS_OVERLAY" in *"'"*) die "MITOS_ROOTFS_OVERLAY must not contain a quote" ;; esac
  ARGS+=(--customize-hook="cp -R --no-preserve=ownership '$MITOS_ROOTFS_OVERLAY'/. \"\$1\"/")
  log "overlay: $MITOS_ROOTFS_OVERLAY"
fi
log "mmdebstrap $SUITE (minbase${PACKAGES[*]:+ + ${PACKAGES[*]}})"
# stdin from /dev/null: mmdebstrap must never wait on a terminal; apt/dpkg are
# non-interactive (mmdebstrap sets DEBIAN_FRONTEND=noninteractive itself).
DEBIAN_FRONTEND=noninteractive mmdebstrap --quiet "${ARGS[@]}" "$SUITE" "$TMP/root" "${MIRRORS[@]}" </dev/null >&2

# --- ext4 image -----------------------------------------------------------------
bash "$(dirname "$0")/ext4-image.sh" "$TMP/root" "$OUT"
