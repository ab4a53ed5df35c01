# syntax=docker/dockerfile:1
# The filter as a Wasm OCI image for Istio's WasmPlugin, for people with a container engine.
# `make images` writes the same content without one (scripts/oci-image.py, target/images/filter)
# and `make push` pushes that; its digest is the one deploy/istio.yaml pins. An image built here
# has its own digest: render with `--filter-digest` of the image you pushed.
#
# From the repository root (the build context; filter.Dockerfile.dockerignore keeps it small):
#   docker buildx build -f deploy/images/filter.Dockerfile --provenance=false --sbom=false \
#     --annotation manifest:module.wasm.image/variant=compat \
#     --output type=image,name=REGISTRY/mcp-warden/filter:VERSION,oci-mediatypes=true,push=true .

FROM rust:1-bookworm AS build
RUN rustup target add wasm32-wasip1
WORKDIR /mcp-warden
COPY . .
# The Makefile maps the checkout to /mcp-warden (where this build runs) and cargo's home to
# /cargo, and sets the same inlining threshold, so with the same toolchain this plugin.wasm is
# byte for byte the one `make images` packs.
ENV CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C llvm-args=-inline-threshold=100 --remap-path-prefix=/usr/local/cargo=/cargo"
RUN cargo build -p warden-filter --target wasm32-wasip1 --release --locked

# Istio's "compat" variant: one layer whose only file is plugin.wasm.
FROM scratch
COPY --from=build /mcp-warden/target/wasm32-wasip1/release/warden_filter.wasm /plugin.wasm
