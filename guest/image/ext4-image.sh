#!/usr/bin/env bash
# ext4-image.sh DIR OUT.img
#
# Turns a root tree into Mitos's read-only root image: mkfs.ext4 -d (no loop
# device, no mount), sized to the tree's blocks plus margin, no journal, the
# read-only feature set so the guest kernel refuses a read-write mount.
# Used by rootfs.sh (Debian roots) and for roots unpacked from OCI images.
#
# Environment:
#   MITOS_ROOTFS_MARGIN_MB  free space left in the image (default 16)
#
# Needs root (mkfs.ext4 -d keeps the tree's owners).
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ext4-image.sh: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 DIR OUT.img"
ROOT=$1
OUT=$2
MARGIN_MB=${MITOS_ROOTFS_MARGIN_MB:-16}
[ -d "$ROOT" ] || die "not a directory: $ROOT"
for tool in mkfs.ext4 tune2fs du find; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mitos-ext4.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

CONTENT_KB=$(du -s -k --apparent-size "$ROOT" | cut -f1)
BLOCKS_KB=$(du -s -k "$ROOT" | cut -f1)
INODES=$(find "$ROOT" -xdev | wc -l)
log "tree: $((CONTENT_KB / 1024)) MiB apparent, $((BLOCKS_KB / 1024)) MiB in blocks, $INODES inodes"

# Blocks used + 10% for ext4 metadata/indirection + margin; retry larger if
# mkfs.ext4 -d runs out of space. No journal (the image is never written),
# the read-only feature set so the guest kernel refuses a rw mount.
SIZE_MB=$(( (BLOCKS_KB * 11 / 10) / 1024 + MARGIN_MB ))
NINODES=$(( INODES + INODES / 10 + 1024 ))
IMG="$TMP/root.img"
for attempt in 1 2 3 4 5; do
  rm -f "$IMG"
  log "mkfs.ext4 -d ($SIZE_MB MiB, $NINODES inodes, attempt $attempt)"
  if mkfs.ext4 -q -F -L mitos-root -b 4096 -m 0 -N "$NINODES" \
       -O ^has_journal,^resize_inode -E lazy_itable_init=0 \
       -d "$ROOT" "$IMG" "${SIZE_MB}M" >"$TMP/mkfs.err" 2>&1; then
    break
  fi
  if [ "$attempt" -eq 5 ] || ! grep -qiE 'no space|could not allocate|too small|No free space' "$TMP/mkfs.err"; then
    cat "$TMP/mkfs.err" >&2
    die "mkfs.ext4 failed"
  fi
  SIZE_MB=$(( SIZE_MB * 5 / 4 + 16 ))
done
# The "read-only" ext4 feature cannot be set by mke2fs; tune2fs can. With it the
# guest kernel refuses any read-write mount of the shared image.
tune2fs -O read-only "$IMG" >/dev/null
if command -v e2fsck >/dev/null; then
  e2fsck -fn "$IMG" >/dev/null 2>&1 || die "e2fsck found errors in the new image"
fi

log "installing $OUT"
mv -f "$IMG" "$OUT"
log "done: $OUT $(du -k --apparent-size "$OUT" | cut -f1) KiB (allocated $(du -k "$OUT" | cut -f1) KiB)"
