# syntax=docker/dockerfile:1
# The token service image, for people with a container engine. `make images` writes the
# equivalent without one (scripts/oci-image.py, target/images/token-service): the same binary
# path, user, entrypoint and CA bundle, with the host's glibc instead of distroless's.
#
# From the repository root (the build context; token-service.Dockerfile.dockerignore keeps it small):
#   docker build -f deploy/images/token-service.Dockerfile -t REGISTRY/mcp-warden/token-service:VERSION .

# Debian 12 builds against the glibc distroless/cc-debian12 ships.
FROM rust:1-bookworm AS build
WORKDIR /mcp-warden
COPY . .
RUN cargo build -p warden-token-service --release --locked

# glibc, libgcc, CA certificates and the user nonroot (65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /mcp-warden/target/release/warden-token-service /usr/local/bin/warden-token-service
# rustls-platform-verifier reads the system roots (rustls-native-certs): name the bundle.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
# Config, keys and secrets come from mounted paths (deploy/kubernetes.yaml: /etc/warden,
# /var/run/secrets/warden/<secret>); the render's Deployment passes the same args.
ENTRYPOINT ["/usr/local/bin/warden-token-service", "serve"]
CMD ["--config", "/etc/warden/warden.yaml"]
