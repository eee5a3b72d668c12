# syntax=docker/dockerfile:1
# The `cls` binary in a small image; every role is a subcommand (`api`, `reconciler`, `controller NAME`, `migrate`),
# as charts/cls runs it. NOTE: this file is not built or tested here: the development and CI machines have no Docker
# engine. `cls up` needs PostgreSQL server binaries, which this image does not carry; use DATABASE_URL.
#
#   docker build -t cls .
#   docker run --rm -e DATABASE_URL=postgres://... -p 8080:8080 cls api

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cls && cp target/release/cls /usr/local/bin/cls

# glibc and CA certificates (Pub/Sub over TLS), no shell, runs as uid 65532
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/cls /usr/local/bin/cls
ENV CLS_LISTEN=0.0.0.0:8080 \
    CLS_LOG_FORMAT=json \
    CLS_HOME=/var/lib/cls
EXPOSE 8080 8081 8082
ENTRYPOINT ["/usr/local/bin/cls"]
CMD ["api"]
