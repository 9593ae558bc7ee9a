# syntax=docker/dockerfile:1
# failoverd container image: `docker build -t failoverd:0.1.0 .` from the repository root.
#
# Builder: Debian 12 (bookworm) with the toolchain rust-toolchain.toml pins. The binary is
# built for x86_64-unknown-linux-gnu and links glibc dynamically (libc, libm, libgcc_s;
# `ldd target/release/failoverd`), so the runtime is distroless cc-debian12 (glibc +
# libgcc + CA certificates), not distroless static (no libc at all: the binary would not
# start). Building on bookworm keeps the glibc the binary needs no newer than the one
# cc-debian12 ships (a trixie builder would produce a binary needing glibc 2.41).
FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied
# out of the cache mount because the mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p failoverd --locked \
    && install -D -m 0755 target/release/failoverd /out/failoverd

# Runtime: no shell, no package manager; the `nonroot` variant runs as 65532:65532,
# the same ids the Kubernetes manifests require (runAsNonRoot, runAsUser 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/failoverd /usr/local/bin/failoverd
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/failoverd"]
CMD ["run", "--config", "/etc/failoverd/config/failoverd.yaml"]
