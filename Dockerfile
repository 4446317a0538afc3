# syntax=docker/dockerfile:1
# Weir's one image: weir-operator (the entrypoint), weir-worker (the command the operator
# gives Transform workers) and the weir CLI, on a minimal base with no shell, run as a
# numeric non-root user.
#
#   docker build -t ghcr.io/weir-dev/weir:0.1.0 .
#
# Without a Docker engine, `make image` builds the same image (the same files, user,
# entrypoint and base libraries) as an OCI archive: see tools/build-image.sh.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weir-operator -p weir-worker --bins \
 && mkdir -p /out \
 && cp target/release/weir-operator target/release/weir-worker target/release/weir /out/

# glibc, libgcc, CA certificates and a "nonroot" user (65532); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
# librdkafka's zlib, which the distroless base does not carry.
COPY --from=build /lib/x86_64-linux-gnu/libz.so.1 /lib/x86_64-linux-gnu/libz.so.1
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/weir-operator"]
