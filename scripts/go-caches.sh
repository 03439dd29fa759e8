# Sourced by the scripts that build Go binaries (control-plane.sh, install-rtsp.sh): their module
# and build caches are posegraph's own, under $POSEGRAPH_CACHE/go, not the user's ~/go and
# ~/.cache/go-build. Every binary they make is cached by version, and nothing else reads these
# caches, so `scripts/control-plane.sh reclaim-go` removes them once every binary is built (`make
# test` runs it): on a fresh machine they held 4.6 GB of modules and 6.0 GB of build cache after
# `make test`'s builds (2026-12-07), on a disk other work shares. Kept until then: one build reuses
# another's packages (KServe's manager built in 61 s after the router, 7 min 36 s alone).
export GOPATH="${POSEGRAPH_CACHE:-$HOME/.cache/posegraph}/go"   # also holds the checksum database's cache
export GOMODCACHE="$GOPATH/pkg/mod" GOCACHE="$GOPATH/build"
