#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1, built from Go modules (no images, no kubelet):
#   scripts/control-plane.sh build      compile etcd, kube-apiserver, kube-controller-manager once,
#                                       cached by version under $POSEGRAPH_CACHE/control-plane
#   scripts/control-plane.sh up DIR     start them; DIR/kubeconfig is cluster-admin; returns when
#                                       the API server is ready
#   scripts/control-plane.sh down DIR   stop what `up DIR` started
#   scripts/control-plane.sh bin        print the directory that holds the binaries
#   scripts/control-plane.sh router     print the path of KServe's router (`build` builds it too)
#   scripts/control-plane.sh build-kserve       compile KServe's manager (cmd/manager), same release
#   scripts/control-plane.sh up DIR --with-kserve  `up DIR`, then `kserve-up DIR`
#   scripts/control-plane.sh kserve-up DIR      KServe's CRDs, ConfigMap, RBAC, webhooks and its
#                                               manager on 127.0.0.1 (log DIR/logs/kserve-manager.log)
#   scripts/control-plane.sh kserve-down DIR    stop the manager, remove what kserve-up made
#   scripts/control-plane.sh manager    print the path of KServe's manager
#   scripts/control-plane.sh storage-initializer  print the folder of the files the storage
#                                       initializer's image takes from KServe's module
#   scripts/control-plane.sh reclaim-go remove posegraph's Go caches once every binary is built
#                                       (scripts/go-caches.sh)
# No node runs: Pods are created (and admitted) but stay Pending. That is enough to test a chart,
# its RBAC and PodSecurity, an operator and the controllers (Deployment, Job, garbage collector,
# and with --with-kserve KServe's InferenceService and InferenceGraph controllers and webhooks).
set -euo pipefail

# Kubernetes 1.34: the k8s.io/* minor that KServe v0.20 (its newest release when pinned) is built
# against, so the API server speaks what KServe's controller expects. etcd 3.6 is what 1.34 ships.
K8S_VERSION="${POSEGRAPH_K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${POSEGRAPH_ETCD_VERSION:-v3.6.16}"
# KServe's InferenceGraph router (cmd/router), the release whose CRDs tests/data/kserve-crds holds.
KSERVE_VERSION="${POSEGRAPH_KSERVE_VERSION:-v0.20.0}"
cache="${POSEGRAPH_CACHE:-$HOME/.cache/posegraph}/control-plane"
bindir="$cache/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
kservedir="$cache/kserve-$KSERVE_VERSION"
# The node's extras (build-node): cluster DNS and a NetworkPolicy enforcer.
COREDNS_VERSION="${POSEGRAPH_COREDNS_VERSION:-v1.12.4}"
KUBE_ROUTER_VERSION="${POSEGRAPH_KUBE_ROUTER_VERSION:-v2.1.0}"
nodedir="$cache/node-k8s-$K8S_VERSION-coredns-$COREDNS_VERSION-kube-router-$KUBE_ROUTER_VERSION"
staging_minor="v0.${K8S_VERSION#v1.}"   # k8s.io/api etc. are published as v0.<minor>.<patch>
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/go-caches.sh
source "$repo/scripts/go-caches.sh"
KSERVE_NAMESPACE=kserve                        # KServe reads its ConfigMap from $POD_NAMESPACE
KSERVE_MANAGER_USER=kserve-controller-manager  # the manager's client certificate CN

# What each build makes: its check for "already built", and reclaim-go's for "every binary built".
control_plane_binaries=("$bindir/etcd" "$bindir/kube-apiserver" "$bindir/kube-controller-manager")
node_binaries=("$nodedir/kubelet" "$nodedir/kube-proxy" "$nodedir/kube-scheduler" "$nodedir/coredns"
               "$nodedir/kube-router")
missing() { local f; for f in "$@"; do [ -x "$f" ] || echo "${f#"$cache"/}"; done; }

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'control-plane: %s\n' "$*" >&2; exit 1; }

# The wrapper module every Kubernetes binary is built from (printed). k8s.io/kubernetes replaces its
# staging modules with ./staging/src/... directories that its module zip does not contain, so it
# cannot be `go install`ed. A wrapper module requires it and points each staging module at its
# published version instead (the list is read from kubernetes' own go.mod, so it stays right for
# any version).
k8s_wrapper() {
  local wrapper="$cache/src-k8s-$K8S_VERSION" kgomod
  mkdir -p "$wrapper"
  kgomod=$(cd "$wrapper" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module posegraph.local/control-plane"
    echo
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo
    sed -nE 's#^[[:space:]]*(replace[[:space:]]+)?(k8s\.io/[a-z0-9-]+)[[:space:]]+=>[[:space:]]+\./staging/src/.*#replace \2 => \2 '"$staging_minor"'#p' "$kgomod"
  } > "$wrapper/go.mod"
  cat > "$wrapper/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
  say "resolving modules for kubernetes $K8S_VERSION ($(grep -c '^replace' "$wrapper/go.mod") staging modules at $staging_minor) and etcd $ETCD_VERSION"
  (cd "$wrapper" && go mod tidy -e >/dev/null 2>"$wrapper/tidy.log") || { cat "$wrapper/tidy.log" >&2; die "go mod tidy failed"; }
  echo "$wrapper"
}

# k8s_build OUT PACKAGE:BINARY...: each built from the wrapper module into OUT.
k8s_build() {
  local out="$1" wrapper t
  shift
  wrapper=$(k8s_wrapper)
  # The version the binaries report: without it kube-apiserver says v0.0.0-master, and helm
  # refuses charts with a kubeVersion constraint (as kubernetes' own hack/lib/version.sh sets it).
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local version_pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $version_pkg.gitVersion=$K8S_VERSION -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$minor"
  ldflags+=" -X $version_pkg.gitTreeState=clean -X $version_pkg.buildDate=1970-01-01T00:00:00Z"
  for target in "$@"; do
    t=$(date +%s)
    (cd "$wrapper" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$out/${target##*:}" "${target%%:*}") \
      || die "go build ${target%%:*} failed"
    say "built ${target##*:} in $(( $(date +%s) - t ))s"
  done
}

build() {
  if [ -z "$(missing "${control_plane_binaries[@]}")" ]; then
    say "control plane already built: $bindir (kubernetes $K8S_VERSION, etcd $ETCD_VERSION)"
    return
  fi
  command -v go >/dev/null || die "go not found: the control plane is built from Go modules (Go ≥ 1.24)"
  local started
  started=$(date +%s)
  rm -rf "$bindir.tmp"
  mkdir -p "$bindir.tmp"
  k8s_build "$bindir.tmp" go.etcd.io/etcd/server/v3:etcd k8s.io/kubernetes/cmd/kube-apiserver:kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager:kube-controller-manager
  rm -rf "$bindir"
  mv "$bindir.tmp" "$bindir"
  say "control plane built in $(( $(date +%s) - started ))s: $bindir"
  ls -l "$bindir" >&2
}

# What a real node adds (scripts/cluster.py): kube-scheduler, kubelet and kube-proxy of the same
# Kubernetes release; CoreDNS (cluster DNS), at the release built against the same client-go minor;
# and kube-router, run only as its NetworkPolicy controller (iptables and ipsets). Each from its Go
# module. kube-network-policies, the enforcer made for kind, was tried first: its nftables `queue`
# statement does not exist in this machine's kernel ("netlink receive: no such file or directory"
# on every sync, and no policy enforced), while iptables' NFQUEUE target and ipset do.
build_node() {
  if [ -z "$(missing "${node_binaries[@]}")" ]; then
    say "node binaries already built: $nodedir"
    return
  fi
  command -v go >/dev/null || die "go not found: the node's binaries are built from Go modules (Go ≥ 1.24)"
  local started t
  started=$(date +%s)
  rm -rf "$nodedir.tmp"
  mkdir -p "$nodedir.tmp"
  k8s_build "$nodedir.tmp" k8s.io/kubernetes/cmd/kubelet:kubelet k8s.io/kubernetes/cmd/kube-proxy:kube-proxy \
    k8s.io/kubernetes/cmd/kube-scheduler:kube-scheduler
  t=$(date +%s)
  (cd "$cache" && CGO_ENABLED=0 GOBIN="$nodedir.tmp" go install -trimpath -ldflags="-s -w" \
    "github.com/coredns/coredns@$COREDNS_VERSION") || die "go install coredns@$COREDNS_VERSION failed"
  say "built coredns in $(( $(date +%s) - t ))s"
  t=$(date +%s)
  (cd "$cache" && CGO_ENABLED=0 GOBIN="$nodedir.tmp" go install -trimpath -ldflags="-s -w" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION") \
    || die "go install kube-router@$KUBE_ROUTER_VERSION failed"
  say "built kube-router in $(( $(date +%s) - t ))s"
  rm -rf "$nodedir"
  mv "$nodedir.tmp" "$nodedir"
  say "node binaries built in $(( $(date +%s) - started ))s: $nodedir"
}

# The directory of KServe's module in Go's module cache (downloaded if need be; read-only).
kserve_module() {
  (cd "$cache" && go mod download -json "github.com/kserve/kserve@$KSERVE_VERSION") \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

# What the storage-initializer image takes from KServe's module (scripts/build_images.py), and the
# lock its pins are checked against (tests/test_images.py), kept beside the router so that neither
# needs the module cache.
stash_storage_initializer() {
  mkdir -p "$2/storage-initializer"
  cp "$1/python/storage-initializer/scripts/initializer-entrypoint" "$1/LICENSE" "$1/python/storage/uv.lock" \
    "$2/storage-initializer/"
}

# The folder of those files (taken from the module once for a router built before they were kept).
kserve_storage_initializer() {
  if [ ! -f "$kservedir/storage-initializer/uv.lock" ]; then
    command -v go >/dev/null || die "go not found: KServe's storage initializer files come from its Go module"
    mkdir -p "$kservedir"
    stash_storage_initializer "$(kserve_module)" "$kservedir"
  fi
  echo "$kservedir/storage-initializer"
}

# posegraph's Go caches removed (scripts/go-caches.sh), once every binary they build is there.
reclaim_go() {
  local absent
  absent=$(missing "${control_plane_binaries[@]}" "$kservedir/router" "$kservedir/manager" "${node_binaries[@]}")
  [ -f "$kservedir/storage-initializer/uv.lock" ] || absent+=" ${kservedir#"$cache"/}/storage-initializer"
  if [ -n "$absent" ]; then
    say "posegraph's Go caches kept: not built yet: $(echo $absent)"
    return
  fi
  [ -d "$GOPATH" ] || return 0
  local size
  size=$(du -sh "$GOPATH" 2>/dev/null | cut -f1)
  if [ -d "$GOMODCACHE" ]; then go clean -modcache; fi   # its files are read-only: go removes them
  rm -rf "$GOPATH"
  say "removed posegraph's Go caches ($size): every binary they build is cached by version"
}

# A fresh writable copy of a module tree: KServe's replace directives mean its binaries are built
# inside their own module, which Go's cache keeps read-only.
writable_copy() {
  rm -rf "$2"
  cp -r "$1" "$2"
  chmod -R u+w "$2"
}

# KServe's router. Its go.mod has replace directives, so `go install` refuses it: it is built inside
# a writable copy of its downloaded module. One change is made, and only to where it listens:
# upstream always binds :8080 (constants.RouterPort); with POSEGRAPH_ROUTER_LISTEN set (tests and
# `posegraph up --router kserve` give it 127.0.0.1:<free port>) it binds there instead. Unset, the
# binary behaves exactly as upstream's. Every other line is KServe's (router.patch beside it).
build_kserve_router() {
  if [ -x "$kservedir/router" ]; then
    say "KServe router already built: $kservedir/router (kserve $KSERVE_VERSION)"
    return
  fi
  command -v go >/dev/null || die "go not found: KServe's router is built from its Go module"
  local started src mod main
  started=$(date +%s)
  mkdir -p "$cache"
  mod=$(kserve_module)
  src="$cache/src-kserve-$KSERVE_VERSION"
  writable_copy "$mod" "$src"
  main="$src/cmd/router/main.go"
  grep -q 'Addr:         ":" + strconv.Itoa(constants.RouterPort),' "$main" \
    || die "cmd/router/main.go of kserve $KSERVE_VERSION has no listen address line to patch"
  sed -i 's|Addr:         ":" + strconv.Itoa(constants.RouterPort),|Addr:         posegraphListenAddr(),|' "$main"
  cat >> "$main" <<'GO'

// posegraphListenAddr is the one change posegraph makes to KServe's router (scripts/control-plane.sh):
// where it listens. Unset, it is upstream's ":8080".
func posegraphListenAddr() string {
	if addr := os.Getenv("POSEGRAPH_ROUTER_LISTEN"); addr != "" {
		return addr
	}
	return ":" + strconv.Itoa(constants.RouterPort)
}
GO
  mkdir -p "$kservedir.tmp"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$kservedir.tmp/router" ./cmd/router) \
    || die "go build ./cmd/router (kserve $KSERVE_VERSION) failed"
  diff -u "$mod/cmd/router/main.go" "$main" > "$kservedir.tmp/router.patch" || true
  stash_storage_initializer "$mod" "$kservedir.tmp"
  rm -rf "$src"   # 440 MB of sources: the binary and its patch are what is kept
  rm -rf "$kservedir"
  mv "$kservedir.tmp" "$kservedir"
  say "built KServe's router ($KSERVE_VERSION) in $(( $(date +%s) - started ))s: $kservedir/router"
}

# KServe's controller manager (cmd/manager: the InferenceService, InferenceGraph and TrainedModel
# controllers and KServe's admission webhooks), the same release as the router, built the same
# way (a writable copy of the module, because of its replace directives). One change, to where its
# webhook server listens: upstream binds every interface (controller-runtime's default Host "");
# with POSEGRAPH_WEBHOOK_HOST set (`up --with-kserve` gives it 127.0.0.1) it binds there. Unset,
# the binary behaves as upstream's; the metrics and probe addresses are flags already.
# Measured on the 2-core test machine (Go 1.26, shared with other test runs), 83 MB binary: 7m36s
# with an empty Go build cache (modules downloaded), 61 s when the router was built first (most
# packages are the same). A second call only checks the binary and manifests are there.
build_kserve_manager() {
  if [ -x "$kservedir/manager" ] && [ -f "$kservedir/config/webhook/manifests.yaml" ]; then
    say "KServe manager already built: $kservedir/manager (kserve $KSERVE_VERSION)"
    return
  fi
  command -v go >/dev/null || die "go not found: KServe's manager is built from its Go module"
  local started src mod main
  started=$(date +%s)
  mkdir -p "$cache"
  mod=$(kserve_module)
  kserve_manifests "$mod"
  if [ -x "$kservedir/manager" ]; then say "KServe manager already built; its manifests copied to $kservedir/config"; return; fi
  src="$cache/src-kserve-manager-$KSERVE_VERSION"   # not the router's: both may build at once
  writable_copy "$mod" "$src"
  main="$src/cmd/manager/main.go"
  grep -q '^			Port: options.webhookPort,$' "$main" \
    || die "cmd/manager/main.go of kserve $KSERVE_VERSION has no webhook port line to patch"
  sed -i 's|^			Port: options.webhookPort,$|			Host: posegraphWebhookHost(),\n			Port: options.webhookPort,|' "$main"
  cat >> "$main" <<'GO'

// posegraphWebhookHost is the one change posegraph makes to KServe's manager
// (scripts/control-plane.sh): where the webhook server listens. Unset, upstream's "" (all interfaces).
func posegraphWebhookHost() string {
	return os.Getenv("POSEGRAPH_WEBHOOK_HOST")
}
GO
  mkdir -p "$kservedir"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$kservedir/manager.tmp" ./cmd/manager) \
    || die "go build ./cmd/manager (kserve $KSERVE_VERSION) failed"
  diff -u "$mod/cmd/manager/main.go" "$main" > "$kservedir/manager.patch" || true
  rm -rf "$src"
  mv "$kservedir/manager.tmp" "$kservedir/manager"   # last: an interrupted build leaves no "manager"
  say "built KServe's manager ($KSERVE_VERSION) in $(( $(date +%s) - started ))s: $kservedir/manager"
}

# What `kserve-up` applies, copied from the same module as the binary, so that `up` needs neither
# the Go module cache nor the network: the CRDs of the kinds the manager watches (InferenceService,
# InferenceGraph, TrainedModel, ServingRuntime, ClusterServingRuntime, ClusterStorageContainer; not
# LocalModel*, which it reads only with localModel.enabled, off in its ConfigMap, and not LLMISVC,
# another controller), the ConfigMap, the webhook configurations, the manager's ClusterRole and the
# default ClusterStorageContainer.
kserve_manifests() {
  local mod="$1" out="$kservedir/config"
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp/crd" "$out.tmp/configmap" "$out.tmp/webhook" "$out.tmp/rbac" "$out.tmp/storagecontainers"
  cp "$mod"/config/crd/full/serving.kserve.io_*.yaml "$mod"/config/crd/full/clusterstoragecontainer/serving.kserve.io_*.yaml "$out.tmp/crd/"
  cp "$mod/config/configmap/inferenceservice.yaml" "$out.tmp/configmap/"
  cp "$mod/config/webhook/manifests.yaml" "$out.tmp/webhook/"
  cp "$mod/config/rbac/role.yaml" "$out.tmp/rbac/"
  cp "$mod/config/storagecontainers/default.yaml" "$out.tmp/storagecontainers/"
  chmod -R u+w "$out.tmp"
  rm -rf "$out"
  mv "$out.tmp" "$out"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One CA signs the API server's serving certificate and every client certificate; a separate key
# pair signs ServiceAccount tokens (as kubeadm does).
certs() {
  local pki="$1"
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=posegraph-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' > "$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  client_cert "$pki" admin "/O=system:masters/CN=posegraph-admin"
  client_cert "$pki" controller-manager "/CN=system:kube-controller-manager"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

client_cert() {
  local pki="$1" name="$2" subject="$3"
  openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > "$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
}

kubeconfig() {
  local dir="$1" name="$2" server="$3"
  cat > "$dir/$name" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: posegraph-test
  cluster:
    server: $server
    certificate-authority: $dir/pki/ca.crt
users:
- name: ${name%.kubeconfig}
  user:
    client-certificate: $dir/pki/${4}.crt
    client-key: $dir/pki/${4}.key
contexts:
- name: posegraph-test
  context: {cluster: posegraph-test, user: ${name%.kubeconfig}}
current-context: posegraph-test
EOF
}

start() {  # start NAME LOG CMD...: in its own session, so `down` can stop it with its children
  local dir="$1" name="$2"
  shift 2
  setsid "$@" >"$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/pids/$name"
}

up() {
  local dir="$1"
  [ -x "$bindir/kube-apiserver" ] || die "not built yet: run 'scripts/control-plane.sh build' first ($bindir)"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ -e "$dir/pids" ] && die "$dir already has a control plane (pids/): run 'down $dir' first"
  mkdir -p "$dir/logs" "$dir/pids" "$dir/etcd"
  certs "$dir/pki"
  local etcd_client etcd_peer api kcm started
  etcd_client=$(free_port); etcd_peer=$(free_port); api=$(free_port); kcm=$(free_port)
  started=$(date +%s)
  start "$dir" etcd "$bindir/etcd" --name posegraph-test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "posegraph-test=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --log-level warn
  # Every request is audited at Metadata level: tests count creations in the audit log instead
  # of sleeping and hoping (who created what, how many times), and find every request RBAC
  # refused. Only the reads of the admin and of the built-in controllers, the bulk of the
  # traffic, are left out.
  cat > "$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  verbs: [get, list, watch]
  users: [posegraph-admin, system:kube-controller-manager, system:apiserver]
- level: None
  verbs: [get, list, watch]
  userGroups: ["system:serviceaccounts:kube-system"]
- level: Metadata
EOF
  start "$dir" kube-apiserver "$bindir/kube-apiserver" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api" \
    --etcd-servers "http://127.0.0.1:$etcd_client" \
    --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
    --client-ca-file "$dir/pki/ca.crt" \
    --service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --authorization-mode RBAC --anonymous-auth=false \
    --enable-admission-plugins NamespaceLifecycle,ServiceAccount,PodSecurity,LimitRanger,ResourceQuota,DefaultStorageClass \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=false \
    --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log" --audit-log-format json \
    --profiling=false
  kubeconfig "$dir" kubeconfig "https://127.0.0.1:$api" admin
  kubeconfig "$dir" controller-manager.kubeconfig "https://127.0.0.1:$api" controller-manager
  local waited=0
  until curl -sf --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
      "https://127.0.0.1:$api/readyz" >/dev/null 2>&1; do
    sleep 0.5; waited=$((waited + 1))
    for p in etcd kube-apiserver; do
      kill -0 "$(cat "$dir/pids/$p")" 2>/dev/null || { tail -20 "$dir/logs/$p.log" >&2; down "$dir"; die "$p exited (log: $dir/logs/$p.log)"; }
    done
    [ "$waited" -lt 240 ] || { tail -20 "$dir/logs/kube-apiserver.log" >&2; down "$dir"; die "API server not ready after 120 s"; }
  done
  # The controllers that turn Deployments, StatefulSets and Jobs into Pods, collect garbage through
  # ownerReferences and mint ServiceAccount token Secrets, each under its own ServiceAccount.
  start "$dir" kube-controller-manager "$bindir/kube-controller-manager" \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm" \
    --service-account-private-key-file "$dir/pki/sa.key" --root-ca-file "$dir/pki/ca.crt" \
    --use-service-account-credentials --leader-elect=false \
    --controllers '*,-nodeipam,-nodelifecycle,-service,-route,-cloud-node-lifecycle' \
    --concurrent-gc-syncs 4
  echo "https://127.0.0.1:$api" > "$dir/server"
  say "control plane up in $(( $(date +%s) - started ))s: API server https://127.0.0.1:$api, kubeconfig $dir/kubeconfig"
}

# ---- KServe's controller on the control plane (`up DIR --with-kserve`, or `kserve-up DIR`) -------

kubectl_bin() {
  local k
  for k in "${POSEGRAPH_KUBECTL:-}" "$repo/.tools/helm4/kubectl" "$(command -v kubectl || true)"; do
    [ -n "$k" ] && [ -x "$k" ] && { echo "$k"; return; }
  done
  die "kubectl not found (scripts/install-helm.sh puts one in .tools/helm4; or set POSEGRAPH_KUBECTL)"
}

# KServe's admission webhooks are called by the API server at https://127.0.0.1:<port>: a CA of
# their own (as cert-manager would make in a cluster) signs the serving certificate, and its
# certificate is the caBundle of every webhook configuration.
kserve_certs() {
  local pki="$1" certs="$2"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=posegraph-test-kserve-webhook-ca" \
    -keyout "$pki/kserve-webhook-ca.key" -out "$pki/kserve-webhook-ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kserve-webhook-server" \
    -keyout "$pki/kserve-webhook.key" -out "$pki/kserve-webhook.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$pki/kserve-webhook.ext"
  openssl x509 -req -in "$pki/kserve-webhook.csr" -CA "$pki/kserve-webhook-ca.crt" -CAkey "$pki/kserve-webhook-ca.key" \
    -CAcreateserial -days 30 -extfile "$pki/kserve-webhook.ext" -out "$pki/kserve-webhook.crt" 2>/dev/null
  # controller-runtime's default CertDir is $TMPDIR/k8s-webhook-server/serving-certs (the manager
  # has no flag for it): the manager runs with TMPDIR=DIR/kserve/tmp.
  mkdir -p "$certs"
  cp "$pki/kserve-webhook.crt" "$certs/tls.crt"
  cp "$pki/kserve-webhook.key" "$certs/tls.key"
  # The manager's own identity, signed by the cluster CA: a user, as a ServiceAccount token
  # would expire while a long test session runs.
  client_cert "$pki" kserve-manager "/CN=$KSERVE_MANAGER_USER"
}

# KServe's ConfigMap as its release ships it (config/configmap/inferenceservice.yaml), changed only
# where a cluster without Knative, Istio, Gateway API or an ingress controller needs it: Standard
# (plain Deployment) mode by default, no Ingress, HTTPRoute or VirtualService, and URLs that are the
# cluster-local names of the Services KServe makes (<name>.<namespace>.svc.cluster.local: the
# InferenceGraph's is its router's Service, the graphURL PoseJobs call; KServe's default,
# <name>-<namespace>.example.com, names an ingress that does not exist here); images pinned to the
# release (`:latest` in the file, the release's tag in KServe's Helm chart); and the router
# propagates the headers posegraph's stages read (spec.graph.headersToPropagate's defaults: the
# bearer token reaches token-protected stages).
kserve_configmap() {
  python3 -c '
import json, sys
version = sys.argv[1]
doc = json.load(sys.stdin)
cm = doc["items"][0] if doc.get("kind") == "List" else doc
data = cm["data"]
def edit(key, **changes):
    value = json.loads(data[key])
    value.update(changes)
    data[key] = json.dumps(value, indent=2)
edit("deploy", defaultDeploymentMode="Standard")
edit("ingress", disableIngressCreation=True, enableGatewayApi=False, disableIstioVirtualHost=True,
     ingressDomain="svc.cluster.local", domainTemplate="{{ .Name }}.{{ .Namespace }}.{{ .IngressDomain }}")
for key in ("storageInitializer", "agent", "batcher", "logger", "router"):
    image = json.loads(data[key])["image"]
    edit(key, image=image.rsplit(":", 1)[0] + ":" + version)
edit("router", headers={"propagate": ["Authorization", "X-Request-Id", "Traceparent"]})
json.dump(cm, sys.stdout)
' "$KSERVE_VERSION"
}

# The webhook configurations of config/webhook/manifests.yaml with each clientConfig.service (a
# Service in front of the manager's pod, in a cluster) replaced by the URL the manager listens on.
kserve_webhooks() {
  python3 -c '
import base64, json, sys
port, ca = sys.argv[1], base64.b64encode(open(sys.argv[2], "rb").read()).decode()
text, at, configs = sys.stdin.read(), 0, []
while text[at:].strip():   # kubectl prints one JSON object per document
    config, end = json.JSONDecoder().raw_decode(text, at + len(text[at:]) - len(text[at:].lstrip()))
    configs.append(config)
    at = end
doc = {"apiVersion": "v1", "kind": "List", "items": configs}
for config in doc["items"]:
    config["metadata"].pop("creationTimestamp", None)
    for hook in config["webhooks"]:
        path = hook["clientConfig"]["service"]["path"]
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca}
json.dump(doc, sys.stdout)
' "$1" "$2"
}

# The ClusterStorageContainer that KServe's release installs (the storage initializer for s3://,
# gs://, https://…), with the release's image and the securityContext of KServe's Helm chart.
kserve_storage_container() {
  python3 -c '
import json, sys
doc = json.load(sys.stdin)
doc = doc["items"][0] if doc.get("kind") == "List" else doc
container = doc["spec"]["container"]
container["image"] = "kserve/storage-initializer:" + sys.argv[1]
# seccompProfile: PodSecurity "restricted" requires one of each container (the KServe chart sets none).
container["securityContext"] = {"allowPrivilegeEscalation": False, "privileged": False, "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
json.dump(doc, sys.stdout)
' "$KSERVE_VERSION"
}

# Starts KServe's manager against the control plane in DIR (which `up DIR` started): CRDs,
# ConfigMap, RBAC, the manager on 127.0.0.1, then its webhook configurations; returns once the
# webhooks answer through the API server. The manager runs under KServe's own ClusterRole
# (config/rbac/role.yaml, bound to its user), not cluster-admin, so that a permission KServe's
# release lacks shows here as a 403 in the audit log, as it would in a cluster.
# Measured on the 2-core test machine (bash -x timestamps): 13.5 s in all, 18-19 s while other tests
# run; certificates 1.2 s, CRDs applied 3.1 s and Established 5.2 s, ConfigMap/RBAC/storage
# container 2.1 s, manager ready 0.6 s, webhooks applied and effective 1.3 s. `kserve-down`: 18 s.
kserve_up() {
  local dir="$1" kubectl cfg="$kservedir/config" started
  [ -x "$kservedir/manager" ] && [ -d "$cfg" ] || die "KServe's manager is not built: run 'scripts/control-plane.sh build-kserve' first ($kservedir)"
  [ -f "$dir/server" ] || die "no control plane in $dir: run 'up $dir' first"
  [ -e "$dir/pids/kserve-manager" ] && die "$dir already runs KServe's manager: run 'kserve-down $dir' first"
  kubectl=$(kubectl_bin)
  started=$(date +%s)
  local k=("$kubectl" --kubeconfig "$dir/kubeconfig")
  mkdir -p "$dir/kserve/tmp"
  kserve_certs "$dir/pki" "$dir/kserve/tmp/k8s-webhook-server/serving-certs"
  kubeconfig "$dir" kserve-manager.kubeconfig "$(cat "$dir/server")" kserve-manager

  # The CRDs are too big for client-side apply's last-applied annotation (262 kB): server-side.
  "${k[@]}" apply --server-side --force-conflicts -f "$cfg/crd/" >/dev/null
  local crd crds=()
  for crd in "$cfg"/crd/serving.kserve.io_*.yaml; do   # serving.kserve.io_<plural>.yaml
    crd=${crd##*/serving.kserve.io_}; crds+=("crd/${crd%.yaml}.serving.kserve.io")
  done
  # Polled, not `kubectl wait`: kubectl 1.35's wait fails ("status.conditions accessor error") on
  # a CRD read before the API server has written any condition.
  local waited=0
  for crd in "${crds[@]}"; do
    until [ "$("${k[@]}" get "$crd" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ]; do
      sleep 0.5; waited=$((waited + 1))
      [ "$waited" -lt 120 ] || die "KServe's CRDs not Established after 60 s ($crd)"
    done
  done
  "${k[@]}" create namespace "$KSERVE_NAMESPACE" --dry-run=client -o json | "${k[@]}" apply -f - >/dev/null
  "${k[@]}" create --dry-run=client -o json -f "$cfg/configmap/inferenceservice.yaml" | kserve_configmap \
    | "${k[@]}" apply --server-side -n "$KSERVE_NAMESPACE" -f - >/dev/null
  "${k[@]}" apply --server-side -f "$cfg/rbac/role.yaml" >/dev/null
  "${k[@]}" create clusterrolebinding kserve-manager-rolebinding --clusterrole kserve-manager-role \
    --user "$KSERVE_MANAGER_USER" --dry-run=client -o json | "${k[@]}" apply --server-side -f - >/dev/null
  "${k[@]}" create --dry-run=client -o json -f "$cfg/storagecontainers/default.yaml" | kserve_storage_container \
    | "${k[@]}" apply --server-side -f - >/dev/null

  local webhook metrics probe
  webhook=$(free_port); metrics=$(free_port); probe=$(free_port)
  start "$dir" kserve-manager env KUBECONFIG="$dir/kserve-manager.kubeconfig" POD_NAMESPACE="$KSERVE_NAMESPACE" \
    TMPDIR="$dir/kserve/tmp" POSEGRAPH_WEBHOOK_HOST=127.0.0.1 \
    "$kservedir/manager" --metrics-addr "127.0.0.1:$metrics" --health-probe-addr "127.0.0.1:$probe" \
    --webhook-port "$webhook" --leader-elect=false
  waited=0
  until curl -sf "http://127.0.0.1:$probe/readyz" >/dev/null 2>&1; do
    sleep 0.5; waited=$((waited + 1))
    kill -0 "$(cat "$dir/pids/kserve-manager")" 2>/dev/null \
      || { tail -20 "$dir/logs/kserve-manager.log" >&2; rm -f "$dir/pids/kserve-manager"; die "KServe's manager exited (log: $dir/logs/kserve-manager.log)"; }
    [ "$waited" -lt 240 ] || { tail -20 "$dir/logs/kserve-manager.log" >&2; kserve_down "$dir"; die "KServe's manager not ready after 120 s"; }
  done

  "${k[@]}" create --dry-run=client -o json -f "$cfg/webhook/manifests.yaml" \
    | kserve_webhooks "$webhook" "$dir/pki/kserve-webhook-ca.crt" > "$dir/kserve/webhooks.json"
  "${k[@]}" apply --server-side -f "$dir/kserve/webhooks.json" >/dev/null
  # The API server picks webhook configurations up asynchronously: probe with a dry run that only
  # KServe's validating webhook refuses (an autoscaler class it does not know) until it does.
  local probe_isvc='{"apiVersion":"serving.kserve.io/v1beta1","kind":"InferenceService","metadata":{"name":"webhook-probe","annotations":{"serving.kserve.io/autoscalerClass":"posegraph-probe"}},"spec":{"predictor":{"model":{"modelFormat":{"name":"pytorch"},"storageUri":"s3://probe/model"}}}}'
  waited=0
  local refused
  until refused=$("${k[@]}" create --dry-run=server -n "$KSERVE_NAMESPACE" -f - <<<"$probe_isvc" 2>&1 || true)
        [[ "$refused" == *"not a supported autoscaler class"* ]]; do
    sleep 0.5; waited=$((waited + 1))
    [ "$waited" -lt 60 ] || { kserve_down "$dir"; die "KServe's webhooks not effective after 30 s"; }
  done
  printf 'namespace=%s\nuser=%s\nwebhook=https://127.0.0.1:%s\nmetrics=http://127.0.0.1:%s/metrics\nprobe=http://127.0.0.1:%s\n' \
    "$KSERVE_NAMESPACE" "$KSERVE_MANAGER_USER" "$webhook" "$metrics" "$probe" > "$dir/kserve/endpoints"
  say "KServe $KSERVE_VERSION manager up in $(( $(date +%s) - started ))s: webhooks on https://127.0.0.1:$webhook, log $dir/logs/kserve-manager.log"
}

# Undoes kserve_up and leaves the control plane as `up` made it (tests that need no KServe run
# after it in the same session): KServe's objects are deleted while the manager still runs (it
# holds a finalizer on each InferenceService), then the manager stops, then the webhook
# configurations go (with failurePolicy Fail, a webhook that no longer answers would refuse every
# InferenceService and every predictor Pod) and the CRDs.
kserve_down() {
  local dir="$1" kubectl pid
  kubectl=$(kubectl_bin)
  local k=("$kubectl" --kubeconfig "$dir/kubeconfig")
  if [ -f "$dir/pids/kserve-manager" ] && kill -0 "$(cat "$dir/pids/kserve-manager")" 2>/dev/null; then
    "${k[@]}" delete inferenceservices,inferencegraphs,trainedmodels --all -A --wait --timeout=120s >/dev/null 2>&1 || true
  fi
  stop_one "$dir" kserve-manager
  [ -f "$dir/kserve/webhooks.json" ] && "${k[@]}" delete --ignore-not-found -f "$dir/kserve/webhooks.json" >/dev/null
  # Anything left (the manager was not running): its finalizer can no longer be removed by KServe.
  local kind
  for kind in inferenceservices inferencegraphs; do
    "${k[@]}" get "$kind" -A -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name}{"\n"}{end}' 2>/dev/null \
      | while read -r ns name; do
          [ -n "$name" ] && "${k[@]}" -n "$ns" patch "$kind" "$name" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
        done
  done
  "${k[@]}" delete --ignore-not-found --wait --timeout=120s -f "$kservedir/config/crd/" >/dev/null
  "${k[@]}" delete --ignore-not-found clusterrolebinding kserve-manager-rolebinding >/dev/null
  "${k[@]}" delete --ignore-not-found clusterrole kserve-manager-role >/dev/null
  # Waited for: a `kserve-up` right after must not find it Terminating.
  "${k[@]}" delete --ignore-not-found --wait --timeout=120s namespace "$KSERVE_NAMESPACE" >/dev/null
  rm -f "$dir/kserve/endpoints"
  say "KServe's manager in $dir stopped, its objects removed"
}

stop_one() {  # stop_one DIR NAME: TERM the process group `start` made, KILL it after 5 s
  local dir="$1" name="$2" pid
  [ -f "$dir/pids/$name" ] || return 0
  pid=$(cat "$dir/pids/$name")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$dir/pids/$name"
}

down() {
  local dir="$1"
  [ -d "$dir/pids" ] || { say "nothing running in $dir"; return 0; }
  for name in kserve-manager kube-controller-manager kube-apiserver etcd; do
    stop_one "$dir" "$name"
  done
  rm -rf "$dir/pids"
  say "control plane in $dir stopped"
}

case "${1:-}" in
  build) build; build_kserve_router ;;
  build-router) build_kserve_router ;;
  build-node) build_node ;;
  node-bin) echo "$nodedir" ;;
  storage-initializer) kserve_storage_initializer ;;
  reclaim-go) reclaim_go ;;
  build-kserve) build_kserve_manager ;;
  router) echo "$kservedir/router" ;;
  manager) echo "$kservedir/manager" ;;
  up) [ -n "${2:-}" ] || die "usage: $0 up DIR [--with-kserve]"
      case "${3:-}" in
        "") up "$2" ;;
        # Not `kserve_up || down`: errexit does not apply inside a function called left of ||.
        --with-kserve) up "$2"; trap 'down "$2" >/dev/null 2>&1 || true' EXIT
                       kserve_up "$(cd "$2" && pwd)"; trap - EXIT ;;
        *) die "usage: $0 up DIR [--with-kserve]" ;;
      esac ;;
  kserve-up) [ -n "${2:-}" ] || die "usage: $0 kserve-up DIR"; kserve_up "$(cd "$2" && pwd)" ;;
  kserve-down) [ -n "${2:-}" ] || die "usage: $0 kserve-down DIR"; kserve_down "$(cd "$2" && pwd)" ;;
  down) [ -n "${2:-}" ] || die "usage: $0 down DIR"; down "$2" ;;
  bin) echo "$bindir" ;;
  *) echo "usage: $0 build | build-router | build-kserve | build-node | node-bin | up DIR [--with-kserve] | kserve-up DIR | kserve-down DIR | down DIR | bin | router | manager" >&2; exit 2 ;;
esac
