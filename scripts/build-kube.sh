#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler (v1.20.2) from
# Debian bookworm's `kubernetes` source package with Debian's Go, for the cluster
# tests (../docs/kubernetes.md). Only Debian's archive is contacted. Idempotent:
# when the binaries already exist in OUTDIR it exits at once, so CI reuses a cache
# dir outside the clone. Usage: build-kube.sh [OUTDIR] [WORKDIR]
set -euo pipefail
OUT=${1:-${MITOS_KUBE_DIR:-/var/cache/mitos-kube}}
W=${2:-/var/tmp/mitos-kube-build}
CMDS=${KUBE_CMDS:-kube-apiserver kube-controller-manager kube-scheduler}
export DEBIAN_FRONTEND=noninteractive
need=0
for c in $CMDS; do [ -x "$OUT/$c" ] || need=1; done
command -v etcd >/dev/null || need=1
if [ $need = 0 ]; then echo "==> kube control plane: reusing $OUT"; exit 0; fi
echo "==> kube control plane: building $CMDS into $OUT (5-9 min, once per machine)"
if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >/etc/apt/sources.list.d/debian-src.sources
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends golang-go etcd-server rsync jq make openssl \
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev >/dev/null
mkdir -p "$W" "$OUT"
cd "$W"
ls -d kubernetes-*/ >/dev/null 2>&1 || { apt-get source --download-only kubernetes >/dev/null 2>&1; tar xzf kubernetes_*.orig.tar.gz; }
K=$(cd "$(ls -d kubernetes-*/ | head -1)" && pwd)
# Go >= 1.18 breaks the vendored reflect2 v1.0.1 (SIGSEGV on the first custom
# resource create): use Debian's reflect2 1.0.2 and json-iterator 1.1.12 instead.
for p in modern-go/reflect2 json-iterator/go; do
  rm -rf "$K/vendor/github.com/$p"
  cp -rL "/usr/share/gocode/src/github.com/$p" "$K/vendor/github.com/$p"
done
# The generated OpenAPI definitions are not in the tarball; 1.20 builds in GOPATH mode.
[ -s "$K/pkg/generated/openapi/zz_generated.openapi.go" ] || (cd "$K" && HOME=$W make generated_files >/dev/null)
mkdir -p "$W/gopath/src/k8s.io"
ln -sfn "$K" "$W/gopath/src/k8s.io/kubernetes"
cd "$W/gopath/src/k8s.io/kubernetes"
export GOPATH=$W/gopath GOCACHE=$W/gocache GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
V=k8s.io/kubernetes/vendor/k8s.io/component-base/version
for c in $CMDS; do
  [ -x "$OUT/$c" ] && continue
  go build -trimpath -ldflags "-s -w -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20" -o "$OUT/$c.tmp" ./cmd/$c
  mv "$OUT/$c.tmp" "$OUT/$c"
done
"$OUT/kube-apiserver" --version
