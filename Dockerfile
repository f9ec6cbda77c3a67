# Build: the release binary, with the crate's one crypto provider (aws-lc-rs, built with the C
# compiler the Rust image already has).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
RUN cargo build --release --locked --bin tessera

# Run: the binary, migrations and policies; no shell tools beyond the base image, no root.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin tessera
WORKDIR /app
COPY --from=build /src/target/release/tessera /usr/local/bin/tessera
COPY migrations ./migrations
COPY policies ./policies
COPY tessera.example.toml ./
USER 10001
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve"]
