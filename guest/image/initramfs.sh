#!/usr/bin/env bash
# initramfs.sh KERNELDIR AGENTBIN OUT.cpio
#
# Build the Mitos initramfs (newc cpio): busybox-static with applet links,
# the modules from KERNELDIR/modules (kernel.sh output) and their load-order,
# /init (this directory's `init`), and the guest agent at /mitos-agent.
#
# Environment:
#   MITOS_BUSYBOX=PATH                 static busybox (default: busybox-static's)
#   MITOS_INITRAMFS_COMPRESS=none|lz4|gzip|zstd   (default none: under TCG the
#       guest kernel's decompressor runs emulated and costs more than reading
#       the ~1.5 MiB of extra bytes QEMU copies into guest RAM; see README)
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'initramfs.sh: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 3 ] || die "usage: $0 KERNELDIR AGENTBIN OUT.cpio"
KERNELDIR=$1 AGENT=$2 OUT=$3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
COMPRESS=${MITOS_INITRAMFS_COMPRESS:-none}

for tool in cpio find sort; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[ -f "$KERNELDIR/modules/load-order" ] || die "$KERNELDIR/modules/load-order missing (run kernel.sh first)"
[ -f "$AGENT" ] || die "agent binary $AGENT not found"
[ -f "$HERE/init" ] || die "$HERE/init not found"

BUSYBOX=${MITOS_BUSYBOX:-}
if [ -z "$BUSYBOX" ]; then
  for c in /bin/busybox /usr/bin/busybox /usr/lib/busybox-static/busybox; do
    [ -x "$c" ] && { BUSYBOX=$c; break; }
  done
fi
[ -n "$BUSYBOX" ] && [ -x "$BUSYBOX" ] || die "no busybox found (apt-get install busybox-static)"
if command -v file >/dev/null && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
  die "$BUSYBOX is not statically linked (install busybox-static, not busybox)"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/mitos-initramfs.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
S="$TMP/root"

log "staging busybox ($BUSYBOX) with applet links"
mkdir -p "$S"/{bin,sbin,usr/bin,usr/sbin,lib/modules,proc,sys,dev,run/mitos/lower,run/mitos/rw,newroot}
cp "$BUSYBOX" "$S/bin/busybox"
chmod 0755 "$S/bin/busybox"
n=0
while IFS= read -r applet; do
  applet=${applet#/}
  [ "$applet" = bin/busybox ] && continue
  [ -e "$S/$applet" ] && continue
  mkdir -p "$S/$(dirname "$applet")"
  ln -s /bin/busybox "$S/$applet"
  n=$((n + 1))
done < <("$S/bin/busybox" --list-full)
[ -e "$S/bin/sh" ] || ln -s busybox "$S/bin/sh"
log "$n applet links"

log "staging modules from $KERNELDIR/modules"
while read -r m; do
  [ -n "$m" ] || continue
  [ -f "$KERNELDIR/modules/$m.ko" ] || die "$KERNELDIR/modules/$m.ko missing"
done <"$KERNELDIR/modules/load-order"
cp "$KERNELDIR"/modules/*.ko "$KERNELDIR/modules/load-order" "$S/lib/modules/"
[ -f "$KERNELDIR/version" ] && cp "$KERNELDIR/version" "$S/lib/modules/version"

log "staging init and agent ($AGENT)"
install -m 0755 "$HERE/init" "$S/init"
install -m 0755 "$AGENT" "$S/mitos-agent"

# A console node lets the kernel give /init stdin/stdout before devtmpfs is
# mounted (init re-attaches to /dev/console anyway if it is missing).
if [ "$(id -u)" = 0 ]; then
  mknod -m 0600 "$S/dev/console" c 5 1
  mknod -m 0666 "$S/dev/null" c 1 3
fi

log "writing newc cpio ($COMPRESS) to $OUT"
mkdir -p "$(dirname "$OUT")"
(
  cd "$S"
  # Fixed owner and mtime: the same inputs give the same bytes.
  find . -mindepth 1 -exec touch -h -d @0 {} +
  find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible
) >"$TMP/initramfs.cpio"
case "$COMPRESS" in
  none) mv "$TMP/initramfs.cpio" "$TMP/out" ;;
  lz4) lz4 -q -l -9 -c "$TMP/initramfs.cpio" >"$TMP/out" ;;   # kernel wants legacy lz4 (-l)
  gzip) gzip -9 -n -c "$TMP/initramfs.cpio" >"$TMP/out" ;;
  zstd) zstd -q -19 -c "$TMP/initramfs.cpio" >"$TMP/out" ;;
  *) die "unknown MITOS_INITRAMFS_COMPRESS=$COMPRESS" ;;
esac
mv -f "$TMP/out" "$OUT"
log "done: $OUT $(stat -c %s "$OUT") bytes"
