# syntax=docker/dockerfile:1
#
# Bazaar in a container. The default build is the monolith (all modules); for one module of
# a split deployment, build with e.g.
#   docker build --build-arg CARGO_BUILD_FLAGS="--no-default-features --features catalog" .
# Everything else is configuration: BAZAAR__… environment variables or a TOML file
# (BAZAAR_CONFIG=/path/in/container.toml).

FROM rust:1.95-bookworm AS builder
# libpq for diesel's PostgreSQL driver (libpq-dev brings OpenSSL's headers, which openssl-sys
# links against too); SQLite is compiled in from source (bundled).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG CARGO_BUILD_FLAGS=""
# The cache mounts keep downloaded crates and compiled dependencies between builds; the
# binary is copied out of the cached target folder within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bazaar ${CARGO_BUILD_FLAGS} \
 && install -D -m 0755 target/release/bazaar /out/bazaar

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 bazaar \
 && useradd --system --uid 10001 --gid bazaar --home-dir /var/lib/bazaar \
        --no-create-home --shell /usr/sbin/nologin bazaar \
 && install -d -o bazaar -g bazaar -m 0750 /var/lib/bazaar /var/lib/bazaar/data
COPY --from=builder /out/bazaar /usr/local/bin/bazaar

USER 10001:10001
WORKDIR /var/lib/bazaar
ENV BAZAAR__SERVER__BIND=0.0.0.0:8080 \
    BAZAAR__DATA_DIR=/var/lib/bazaar/data
# The SQLite files of the local modules (unused by modules configured for PostgreSQL).
VOLUME ["/var/lib/bazaar/data"]
EXPOSE 8080
# Liveness is GET /health/live; readiness GET /health/ready (curl is in the image for the
# compose files' health checks, which use the latter).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/health/live || exit 1
# `serve` stops gracefully on SIGTERM, waiting up to server.shutdown_timeout (30 s) for
# in-flight requests: give `docker stop` / the orchestrator at least that long.
ENTRYPOINT ["/usr/local/bin/bazaar"]
CMD ["serve"]
