# syntax=docker/dockerfile:1
#
# spillway's container image. Build (amd64 and arm64, see README "Container
# image"):
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg REVISION=$(git rev-parse --short HEAD) \
#     -t myregistry.azurecr.io/spillway:0.1.0 --push .
#   az acr build -r myregistry -t spillway:0.1.0 .
#
# The final stage is a root filesystem assembled by deploy/image/rootfs.sh:
# the stripped binary, exactly the shared libraries it links, CA
# certificates, nonroot (65532) in /etc/passwd; no shell. CI builds the
# same final stage from this file without a daemon or a base image
# (.ci/image), and runs it.

ARG RUST_VERSION=1.89
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
ARG REVISION=unknown
ENV SPILLWAY_GIT_COMMIT=${REVISION}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin spillway \
 && deploy/image/rootfs.sh target/release/spillway /rootfs

# final stage (.ci/image builds from here down, with the rootfs it assembles)
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=build /rootfs/ /
USER 65532:65532
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
ENTRYPOINT ["/usr/local/bin/spillway"]
CMD ["--help"]
LABEL org.opencontainers.image.title="spillway" \
      org.opencontainers.image.description="Burst-scaling scheduler extender, autoscaler and embedded ACI provider for AKS" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/spillway-dev/spillway" \
      org.opencontainers.image.licenses="Apache-2.0"
