#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine (as root) and runs the main
# job: build the guest images, start mitosd, create a python sandbox, fork it
# 8 ways and print each child's i ** 2 (examples/fork-swarm.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
export MITOS_DATA_DIR="${MITOS_DATA_DIR:-/var/lib/mitos}"
PORT="${MITOS_PORT:-8080}"
export MITOS_BASE_URL="${MITOS_BASE_URL:-http://127.0.0.1:${PORT}}"
bash scripts/install-deps.sh
[ -d node_modules ] || npm ci --no-audit --no-fund
echo "==> building (TypeScript, guest agent, web console)"
npm run -s build
# The commands on PATH: mitos, mitosd, mitos-mcp.
ln -sf "$PWD/packages/cli/dist/bin/mitos.js" /usr/local/bin/mitos
ln -sf "$PWD/packages/server/dist/bin/mitosd.js" /usr/local/bin/mitosd
ln -sf "$PWD/packages/mcp/dist/bin/mitos-mcp.js" /usr/local/bin/mitos-mcp
echo "==> guest images (cached under ${MITOS_DATA_DIR}/images)"
npx tsx packages/engine/src/bin/build-images.ts base python
if curl -fsS "${MITOS_BASE_URL}/v1/health" >/dev/null 2>&1; then
  echo "==> mitosd already running at ${MITOS_BASE_URL}"
else
  mkdir -p "${MITOS_DATA_DIR}"
  LOG="${MITOS_DATA_DIR}/mitosd.log"
  echo "==> starting mitosd on ${MITOS_BASE_URL} (log: ${LOG})"
  nohup node packages/server/dist/bin/mitosd.js --port "${PORT}" --data-dir "${MITOS_DATA_DIR}" >"${LOG}" 2>&1 &
  echo $! >"${MITOS_DATA_DIR}/mitosd.pid"
  for _ in $(seq 1 120); do
    curl -fsS "${MITOS_BASE_URL}/v1/health" >/dev/null 2>&1 && break
    if ! kill -0 "$(cat "${MITOS_DATA_DIR}/mitosd.pid")" 2>/dev/null; then
      echo "mitosd exited; its log:" >&2; tail -20 "${LOG}" >&2; exit 1
    fi
    sleep 0.5
  done
fi
echo "==> demo: a python sandbox forked into 8 children, each printing i ** 2"
npx tsx examples/fork-swarm.ts
echo "==> done. mitosd keeps running (pid file ${MITOS_DATA_DIR}/mitosd.pid, token ${MITOS_DATA_DIR}/token)."
echo "    web console: ${MITOS_BASE_URL}/ui/ (sign in with the token)"
echo "    stop it with: kill \$(cat ${MITOS_DATA_DIR}/mitosd.pid)  (running sandboxes keep running for the next"
echo "    mitosd, docs/restarts.md; terminate them first, or start mitosd with --shutdown terminate)"
