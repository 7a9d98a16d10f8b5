#!/usr/bin/env bash
# kernel.sh OUTDIR
#
# Fetch Debian's cloud kernel (linux-image-cloud-amd64 and the versioned
# linux-image-<ver>-cloud-amd64 it depends on), extract the uncompressed ELF
# vmlinux from the LZ4 bzImage payload (microvm boots it through its PVH note),
# and copy the virtio/overlay modules the initramfs loads.
#
# Output:
#   OUTDIR/vmlinux            uncompressed ELF kernel
#   OUTDIR/config             the kernel's .config (for reference)
#   OUTDIR/version            kernel release, e.g. 6.1.0-56-cloud-amd64
#   OUTDIR/package-version    Debian package version, e.g. 6.1.192-2
#   OUTDIR/modules/*.ko       uncompressed modules
#   OUTDIR/modules/load-order module names, one per line, dependencies first
#
# Environment:
#   MITOS_KERNEL_PACKAGE   meta package (default linux-image-cloud-amd64)
#   MITOS_EXTRA_MODULES    extra module names to include (space separated)
#
# Needs: apt-get, dpkg-deb, lz4, grep (with -P), strings (binutils) or a
# fallback, xz/zstd only if the modules are compressed. Runs as root or not
# (apt-get download needs no root, apt-get update does).
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'kernel.sh: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUTDIR=$1
META=${MITOS_KERNEL_PACKAGE:-linux-image-cloud-amd64}
# Module names as the kernel spells them (dash and underscore are equivalent).
MODULES="virtio_ring virtio virtio_mmio virtio_console virtio_blk virtio_rng virtio_net overlay ${MITOS_EXTRA_MODULES:-}"

for tool in apt-get apt-cache dpkg-deb lz4 grep od; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/mitos-kernel.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# Read the "depends=" field of a module (no modinfo needed).
mod_depends() {
  local f=$1
  if command -v strings >/dev/null; then
    strings -a "$f" | grep -m1 '^depends=' | cut -d= -f2- || true
  else
    tr '\0' '\n' <"$f" | grep -a -m1 '^depends=' | cut -d= -f2- || true
  fi
}

log "checking apt metadata for $META"
if ! apt-cache show "$META" >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "apt has no metadata for $META; run apt-get update as root"
  log "apt-get update"
  apt-get update -qq >&2
fi

mkdir -p "$TMP/debs"
cd "$TMP/debs"
# As root, apt drops privileges to _apt for downloads, which cannot write into
# a 0700 mktemp dir; run the download as root instead (no warning, no chmod).
APT_OPTS=(-q -o APT::Sandbox::User=root)

log "apt-get download $META"
apt-get "${APT_OPTS[@]}" download "$META" >&2
META_DEB=$(ls "$TMP"/debs/"${META}"_*.deb)
DEP=$(dpkg-deb -f "$META_DEB" Depends | tr ',' '\n' | sed 's/[ (].*//; s/^ *//' |
  grep -E '^linux-image-[0-9].*' | head -n1) || true
[ -n "$DEP" ] || die "cannot find the versioned kernel package in Depends of $META"
PKGVER=$(dpkg-deb -f "$META_DEB" Version)

log "apt-get download $DEP"
apt-get "${APT_OPTS[@]}" download "$DEP" >&2
IMG_DEB=$(ls "$TMP"/debs/"${DEP}"_*.deb)

log "unpacking $(basename "$IMG_DEB")"
dpkg-deb -x "$IMG_DEB" "$TMP/root"
KVER=${DEP#linux-image-}
VMLINUZ="$TMP/root/boot/vmlinuz-$KVER"
MODDIR="$TMP/root/lib/modules/$KVER"
[ -f "$VMLINUZ" ] || die "no $VMLINUZ in $IMG_DEB"
[ -d "$MODDIR" ] || die "no $MODDIR in $IMG_DEB"

STAGE="$TMP/out"
mkdir -p "$STAGE/modules"

# --- vmlinux ---------------------------------------------------------------
# The bzImage payload is compressed with `lz4 -l` (legacy format, magic
# 0x184C2102 = bytes 02 21 4C 18); also try the LZ4 frame magic 04 22 4D 18.
# The decompressor stops at the end of the stream; the bytes after it (rest
# of the bzImage) make lz4 report an error, which is expected: the result is
# checked for the ELF magic instead (as scripts/extract-vmlinux does).
log "extracting ELF vmlinux from LZ4 payload of vmlinuz-$KVER"
found=
for magic in '\x02\x21\x4c\x18' '\x04\x22\x4d\x18'; do
  for off in $(LC_ALL=C grep -obUaP "$magic" "$VMLINUZ" | cut -d: -f1); do
    rm -f "$STAGE/vmlinux"
    tail -c +"$((off + 1))" "$VMLINUZ" | lz4 -dc 2>/dev/null >"$STAGE/vmlinux" || true
    if [ -s "$STAGE/vmlinux" ] && [ "$(od -An -N4 -tx1 "$STAGE/vmlinux" | tr -d ' ')" = 7f454c46 ]; then
      found=$off
      break 2
    fi
  done
done
[ -n "$found" ] || die "no LZ4 stream that decompresses to an ELF image in $VMLINUZ"
log "vmlinux: LZ4 payload at offset $found, $(stat -c %s "$STAGE/vmlinux") bytes"
if [ -f "$TMP/root/boot/config-$KVER" ]; then
  cp "$TMP/root/boot/config-$KVER" "$STAGE/config"
fi

# --- modules ---------------------------------------------------------------
# name (underscores) -> path of the .ko[.xz|.zst] file
declare -A MODPATH=()
while IFS= read -r f; do
  b=$(basename "$f")
  b=${b%.xz}; b=${b%.zst}; b=${b%.gz}; b=${b%.ko}
  MODPATH[${b//-/_}]=$f
done < <(find "$MODDIR/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

declare -A STATE=()   # 1 = visiting, 2 = done
ORDER=()

copy_module() {
  local name=$1 src=$2 dst="$STAGE/modules/$1.ko"
  case "$src" in
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -q -dc "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *) cp "$src" "$dst" ;;
  esac
}

visit() {
  local name=${1//-/_}
  case "${STATE[$name]:-0}" in
    2) return 0 ;;
    1) die "module dependency cycle at $name" ;;
  esac
  local src=${MODPATH[$name]:-}
  if [ -z "$src" ]; then
    # Not a module: built into the kernel (modules.builtin) or absent.
    if grep -qE "/${name//_/[-_]}\.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; then
      log "module $name is built in"
      STATE[$name]=2
      return 0
    fi
    die "module $name not found in $MODDIR"
  fi
  STATE[$name]=1
  copy_module "$name" "$src"
  local deps d
  deps=$(mod_depends "$STAGE/modules/$name.ko")
  for d in ${deps//,/ }; do
    visit "$d"
  done
  STATE[$name]=2
  ORDER+=("$name")
}

log "collecting modules: $MODULES"
for m in $MODULES; do visit "$m"; done
printf '%s\n' "${ORDER[@]}" >"$STAGE/modules/load-order"
log "load order: ${ORDER[*]}"
printf '%s\n' "$KVER" >"$STAGE/version"
printf '%s\n' "$PKGVER" >"$STAGE/package-version"

# --- install into OUTDIR (replace previous results) -------------------------
log "installing into $OUTDIR"
mkdir -p "$OUTDIR"
rm -rf "$OUTDIR/modules" "$OUTDIR/vmlinux.new"
cp "$STAGE/vmlinux" "$OUTDIR/vmlinux.new"
mv -f "$OUTDIR/vmlinux.new" "$OUTDIR/vmlinux"
cp -r "$STAGE/modules" "$OUTDIR/modules"
[ -f "$STAGE/config" ] && cp "$STAGE/config" "$OUTDIR/config"
cp "$STAGE/version" "$STAGE/package-version" "$OUTDIR/"
log "done: kernel $KVER ($PKGVER) in $OUTDIR"
