#!/usr/bin/env bash
# Runs every test: C agent unit tests, then the TypeScript suites (unit tests
# and end-to-end tests that boot real QEMU microVMs). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -d node_modules ] || npm ci --no-audit --no-fund
npm run -s build
make -s -C guest/agent test
# Build (or find cached) guest images once, with progress, before the suites.
npx tsx packages/engine/src/bin/build-images.ts base python node
# The Kubernetes control plane the cluster suites run against (packages/operator):
# built once from Debian's source package into a cache outside the clone.
bash scripts/build-kube.sh
mapfile -t files < <(ls packages/*/test/*.test.ts | sort)
# Last: no suite may leave RAM in /dev/shm behind (test-support/suite-leaks.test.ts).
files+=(test-support/suite-leaks.test.ts)
exec node --import tsx --test --test-concurrency=1 "${files[@]}"
