# syntax=docker/dockerfile:1
# Tally: tally-ingress, tally-worker and the tally admin CLI in one image.
#   docker build -t tally .
#   docker run --rm tally tally --help
# The command picks the role (default: tally-ingress); see docker-compose.yml.

# ---- build ----------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# sqlx compile-time checks (if any) must use checked-in query data, never a live database.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

COPY . .

# The registry/git caches and target/ persist between builds (BuildKit cache mounts); the
# binaries are copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/tally-ingress target/release/tally-worker target/release/tally /out/

# ---- runtime --------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: TLS to Postgres/NATS/webhook peers; curl: container healthchecks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent tally

COPY --from=builder /out/tally-ingress /out/tally-worker /out/tally /usr/local/bin/

USER tally
ENV TALLY_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
STOPSIGNAL SIGTERM
CMD ["tally-ingress"]
