# Build: the release binary. protox compiles the protos in Rust, so no protoc is needed.
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY demo demo
COPY src src
# The workspace's other members: cargo loads every member's manifest even to build one package.
COPY bench bench
COPY testkit testkit
RUN cargo build --release --locked --package storywire && strip target/release/storywire

# Run: a small Debian base (the binary links glibc), no toolchain, a non-root user.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin storywire
COPY --from=build /src/target/release/storywire /usr/local/bin/storywire
USER storywire
# Inside a container the server must listen beyond loopback to be reachable through -p, and so it
# refuses to start without a tokens file (STORYWIRE_TOKENS, e.g. a mounted secret) unless it is
# run with --allow-anonymous. See SECURITY.md.
ENV STORYWIRE_LISTEN=0.0.0.0:50051
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["storywire", "health"]
ENTRYPOINT ["storywire"]
CMD ["serve"]
