#!/usr/bin/env bash
# Installs the Debian packages Mitos needs on the host (idempotent; root).
set -euo pipefail
PKGS=(qemu-system-x86 qemu-utils mmdebstrap e2fsprogs erofs-utils busybox-static cpio lz4 zstd
      make gcc libc6-dev clang libclang-rt-14-dev python3 ca-certificates curl
      util-linux   # setpriv and nsenter: each QEMU as its own uid, networked ones in their namespace
      iproute2 nftables   # network slots and their rulesets (docs/network.md)
      skopeo umoci        # templates from OCI images (pull, flatten)
      docker-registry     # the registry the OCI tests push to and pull from
      chromium fonts-dejavu-core)   # the web console's browser test (packages/console/test)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "==> host packages: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "mitos: missing packages ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "==> installing host packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
