#!/usr/bin/env bash
# Builds the real Kubernetes binaries the tests run, from upstream Go modules:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, and for the real node the
# kubelet and kube-proxy (k8s.io/kubernetes), embedded etcd (./etcd), kwok, helm, CoreDNS (the
# real node's cluster DNS); and kube-score, the manifest linter the chart tests
# run (kube-linter cannot be fetched: the module proxy answers 403 for every version of it).
# Output goes to a cache directory keyed by every version involved, and is rebuilt only when missing. Prints the bin directory on stdout.
#
#   tests/cluster/build.sh          build (or reuse) and print the bin dir
#   tests/cluster/build.sh regen    regenerate go.mod/go.sum from upstream's go.mod
set -euo pipefail

K8S_VERSION=v1.35.4
KWOK_VERSION=v0.7.0
HELM_VERSION=v4.3.1
KUBE_SCORE_VERSION=v1.20.0
COREDNS_VERSION=v1.15.0
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "[cluster-build] $*" >&2; }

regen() {
  # k8s.io/kubernetes points every k8s.io/* staging module at ./staging/src; outside that
  # repo each one must be replaced by its published v0.x tag. Read the list from upstream.
  local staging="v0.${K8S_VERSION#v1.}"
  local upstream
  upstream=$(cd "$here" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  cd "$here"
  rm -f go.mod go.sum
  go mod init whatsapp-operator/testcluster >/dev/null 2>&1
  go mod edit -go=1.25.0 -require="k8s.io/kubernetes@${K8S_VERSION}"
  local mods
  mods=$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$upstream")
  [ -n "$mods" ] || { log "no staging replaces found in $upstream"; exit 1; }
  for m in $mods; do go mod edit -replace="${m}=${m}@${staging}"; done
  cat > tools.go <<'GO'
//go:build tools

// Package tools pins the upstream commands built by build.sh.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
  go mod tidy
  log "regenerated go.mod with $(echo "$mods" | wc -w) staging replaces at ${staging}"
}

build() {
  local gover key root bin
  gover=$(go env GOVERSION)
  key="k8s-${K8S_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_score-${KUBE_SCORE_VERSION}_coredns-${COREDNS_VERSION}_${gover}_$(cat "$here/go.sum" "$here/etcd/main.go" | sha256sum | cut -c1-12)"
  root="${WAO_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/whatsapp-operator}/$key"
  bin="$root/bin"
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd kwok helm kube-score coredns)
  local missing=()
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
  if [ ${#missing[@]} -eq 0 ]; then
    log "cached: $bin"
    echo "$bin"
    return
  fi
  log "building into $bin: ${missing[*]}"
  mkdir -p "$bin"
  local t0=$SECONDS
  local pkg="k8s.io/component-base/version" cgo="k8s.io/client-go/pkg/version"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local vflags="-X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor} -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  vflags="$vflags -X $cgo.gitVersion=${K8S_VERSION} -X $cgo.gitMajor=1 -X $cgo.gitMinor=${minor} -X $cgo.gitTreeState=clean"
  (
    cd "$here"
    export CGO_ENABLED=0 GOFLAGS=-mod=mod
    for b in "${missing[@]}"; do
      local s=$SECONDS
      case "$b" in
        etcd) go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" ./etcd ;;
        kwok) GOBIN="$bin/.kwok" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" && mv "$bin/.kwok/kwok" "$bin/kwok.tmp" ;;
        helm) GOBIN="$bin/.helm" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}" "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}" && mv "$bin/.helm/helm" "$bin/helm.tmp" ;;
        coredns) GOBIN="$bin/.coredns" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@${COREDNS_VERSION}" && mv "$bin/.coredns/coredns" "$bin/coredns.tmp" ;;
        kube-score) GOBIN="$bin/.kube-score" go install -trimpath -ldflags "-s -w" "github.com/zegl/kube-score/cmd/kube-score@${KUBE_SCORE_VERSION}" && mv "$bin/.kube-score/kube-score" "$bin/kube-score.tmp" ;;
        *) go build -trimpath -ldflags "-s -w $vflags" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b" ;;
      esac
      mv "$bin/$b.tmp" "$bin/$b"
      log "built $b in $((SECONDS - s))s ($(du -h "$bin/$b" | cut -f1))"
    done
  )
  rmdir "$bin/.kwok" "$bin/.helm" "$bin/.kube-score" "$bin/.coredns" 2>/dev/null || true
  log "control plane binaries built in $((SECONDS - t0))s"
  # Older builds are dead weight (about 500 MB each).
  for old in "$(dirname "$root")"/k8s-*; do
    [ "$old" = "$root" ] || rm -rf "$old"
  done
  echo "$bin"
}

case "${1:-build}" in
  regen) regen ;;
  build) build ;;
  *) echo "usage: $0 [build|regen]" >&2; exit 2 ;;
esac
