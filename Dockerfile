# The image the Kubernetes manifests (deploy/k8s/) run: the gauntlet binary on PATH, in
# Debian bookworm. Build it from the repository root:
#
#     docker build -t gauntlet:latest .
#
# `make docker-smoke` builds it and runs a tiny suite inside it where a Docker daemon is
# available. The data sets are not in the image: mount them (the manifests use /shared/data).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gauntlet

FROM debian:bookworm-slim
COPY --from=build /src/target/release/gauntlet /usr/local/bin/gauntlet
WORKDIR /work
ENTRYPOINT ["gauntlet"]
