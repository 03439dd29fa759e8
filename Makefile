# The two commands of the README. Everything they install is in this repository.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test test-fast images cluster cluster-down generate bootstrap-run bootstrap-venv-test bootstrap-test clean

# Main job on the embedded default: a bundled photo and a clip made from it, end to end.
demo: bootstrap-run
	$(VENV)/bin/posegraph demo

# The test suite (what CI runs through .ci/run). It builds the images first: tests/test_images.py
# runs them. Then the Go caches of those builds go (scripts/go-caches.sh: 10 GB; every binary is
# cached by version).
test: bootstrap-test images
	@scripts/control-plane.sh reclaim-go
	POSEGRAPH_FULL_SUITE=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The unit tier, the command to run while developing: no Go build, no images, no servers, no
# control plane, no browser, no Blender (tests/tiers.py; a fast test that opens a socket fails). `make test`
# runs it too, with everything else. One worker per core, a test module to a worker (its module
# fixtures made once): on this 2-core machine 2 min 4 s to 2 min 30 s warm (2026-12-07; README).
test-fast: bootstrap-venv-test
	$(VENV)/bin/python -m pytest -m fast -n auto --dist loadfile $(PYTEST_ARGS)

# Every image the chart and KServe run, built with Docker and cached (scripts/build_images.py,
# docs/images.md); starts Debian's dockerd for the build when no engine answers. Needs root
# for that, and Go (KServe's router). A second run takes seconds.
images:
	python3 scripts/build_images.py

# A real one-node Kubernetes cluster on this machine with KServe and the chart installed, from the
# images above (scripts/cluster.py; docs/kind.md, "Without kind"); `make cluster-down` stops it
# and leaves nothing behind. Needs root.
cluster: bootstrap-run images
	@scripts/install-helm.sh
	$(VENV)/bin/python scripts/cluster.py up

cluster-down:
	$(VENV)/bin/python scripts/cluster.py down

# The files generated from the code (CRDs, RBAC, JSON Schemas); tests/test_generated.py fails when
# one is stale.
generate:
	$(VENV)/bin/python -m posegraph.generate

bootstrap-run:
	@scripts/bootstrap.sh run

bootstrap-venv-test:
	@scripts/bootstrap.sh test

# The control plane (etcd, kube-apiserver, kube-controller-manager), KServe's router and KServe's
# manager (tests/test_kserve_controller.py) are built from Go modules once and cached by version
# outside the venv: a second run only checks that they are there.
bootstrap-test: bootstrap-venv-test
	@scripts/control-plane.sh build
	@scripts/control-plane.sh build-kserve

clean:
	rm -rf posegraph-demo posegraph-out tests/artifacts .pytest_cache
