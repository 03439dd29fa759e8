#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1, built from Go modules (no images, no kubelet):
#   scripts/control-plane.sh build      compile etcd, kube-apiserver, kube-controller-manager once,
#                                       cached by version under $POSEGRAPH_CACHE/control-plane
#   scripts/control-plane.sh up DIR     start them; DIR/kubeconfig is cluster-admin; returns when
#                                       the API server is ready
#   scripts/control-plane.sh down DIR   stop what `up DIR` started
#   scripts/control-plane.sh bin        print the directory that holds the binaries
#   scripts/control-plane.sh router     print the path of KServe's router (`build` builds it too)
# No node runs: Pods are created (and admitted) but stay Pending. That is enough to test a chart,
# its RBAC and PodSecurity, an operator and the controllers (Deployment, Job, garbage collector).
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
staging_minor="v0.${K8S_VERSION#v1.}"   # k8s.io/api etc. are published as v0.<minor>.<patch>

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'control-plane: %s\n' "$*" >&2; exit 1; }

build() {
  if [ -x "$bindir/kube-apiserver" ] && [ -x "$bindir/kube-controller-manager" ] && [ -x "$bindir/etcd" ]; then
    say "control plane already built: $bindir (kubernetes $K8S_VERSION, etcd $ETCD_VERSION)"
    return
  fi
  command -v go >/dev/null || die "go not found: the control plane is built from Go modules (Go ≥ 1.24)"
  local started wrapper kgomod
  started=$(date +%s)
  wrapper="$cache/src-k8s-$K8S_VERSION"
  mkdir -p "$wrapper" "$bindir.tmp"
  # k8s.io/kubernetes replaces its staging modules with ./staging/src/... directories that its
  # module zip does not contain, so it cannot be `go install`ed. A wrapper module requires it and
  # points each staging module at its published version instead (the list is read from
  # kubernetes' own go.mod, so it stays right for any version).
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
)
EOF
  say "resolving modules for kubernetes $K8S_VERSION ($(grep -c '^replace' "$wrapper/go.mod") staging modules at $staging_minor) and etcd $ETCD_VERSION"
  (cd "$wrapper" && go mod tidy -e >/dev/null 2>"$wrapper/tidy.log") || { cat "$wrapper/tidy.log" >&2; die "go mod tidy failed"; }
  # The version the binaries report: without it kube-apiserver says v0.0.0-master, and helm
  # refuses charts with a kubeVersion constraint (as kubernetes' own hack/lib/version.sh sets it).
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local version_pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $version_pkg.gitVersion=$K8S_VERSION -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$minor"
  ldflags+=" -X $version_pkg.gitTreeState=clean -X $version_pkg.buildDate=1970-01-01T00:00:00Z"
  local t
  for target in go.etcd.io/etcd/server/v3:etcd \
                k8s.io/kubernetes/cmd/kube-apiserver:kube-apiserver \
                k8s.io/kubernetes/cmd/kube-controller-manager:kube-controller-manager; do
    t=$(date +%s)
    (cd "$wrapper" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$bindir.tmp/${target##*:}" "${target%%:*}") \
      || die "go build ${target%%:*} failed"
    say "built ${target##*:} in $(( $(date +%s) - t ))s"
  done
  rm -rf "$bindir"
  mv "$bindir.tmp" "$bindir"
  say "control plane built in $(( $(date +%s) - started ))s: $bindir"
  ls -l "$bindir" >&2
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
  mod=$(cd "$cache" && go mod download -json "github.com/kserve/kserve@$KSERVE_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  src="$cache/src-kserve-$KSERVE_VERSION"
  rm -rf "$src"
  cp -r "$mod" "$src"
  chmod -R u+w "$src"
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
  rm -rf "$src"   # 440 MB of sources: the binary and its patch are what is kept
  rm -rf "$kservedir"
  mv "$kservedir.tmp" "$kservedir"
  say "built KServe's router ($KSERVE_VERSION) in $(( $(date +%s) - started ))s: $kservedir/router"
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

down() {
  local dir="$1" pid
  [ -d "$dir/pids" ] || { say "nothing running in $dir"; return 0; }
  for name in kube-controller-manager kube-apiserver etcd; do
    [ -f "$dir/pids/$name" ] || continue
    pid=$(cat "$dir/pids/$name")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  rm -rf "$dir/pids"
  say "control plane in $dir stopped"
}

case "${1:-}" in
  build) build; build_kserve_router ;;
  build-router) build_kserve_router ;;
  router) echo "$kservedir/router" ;;
  up) [ -n "${2:-}" ] || die "usage: $0 up DIR"; up "$2" ;;
  down) [ -n "${2:-}" ] || die "usage: $0 down DIR"; down "$2" ;;
  bin) echo "$bindir" ;;
  *) echo "usage: $0 build | build-router | up DIR | down DIR | bin | router" >&2; exit 2 ;;
esac
