#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine (as root) and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -d node_modules ] || npm ci --no-audit --no-fund
echo "==> building (TypeScript, guest agent)"
npm run -s build
echo "==> guest images (cached under ${MITOS_DATA_DIR:-/var/lib/mitos}/images)"
npx tsx packages/engine/src/bin/build-images.ts base python
echo "==> demo"
exec npx tsx packages/engine/src/bin/demo.ts
