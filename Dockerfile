# LIS Ledger: one image for every role (serve, relay, project, migrate).
# Build: docker build -t lisledger .   Run: docker run lisledger serve
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lis-api

FROM debian:bookworm-slim
# ca-certificates is left unpinned on purpose: the newest trust store is the one wanted,
# and a pinned version vanishes from the archive when Debian updates it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin lisledger
COPY --from=build /src/target/release/lisledger /usr/local/bin/lisledger
COPY deploy/seed /opt/lisledger/seed
USER 10001:10001
ENV LIS_HTTP_ADDR=0.0.0.0:8080 \
    LIS_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/lisledger"]
CMD ["serve"]
