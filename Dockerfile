# Build: docker build -t pgdual .
# Run:   docker run -p 6432:6432 -e PGDUAL_LEGACY_HOST=db.example -e PGDUAL_LEGACY_PORT=5432 pgdual
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pgdual \
 && cp target/release/pgdual /usr/local/bin/pgdual

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home pgdual
COPY --from=build /usr/local/bin/pgdual /usr/local/bin/pgdual
COPY pgdual.example.toml /etc/pgdual/pgdual.toml
USER pgdual
# Clients reach the proxy from outside the container; the admin API stays on loopback
# unless PGDUAL_ADMIN_LISTEN and PGDUAL_ADMIN_TOKEN are both set.
ENV PGDUAL_CONFIG=/etc/pgdual/pgdual.toml \
    PGDUAL_LISTEN=0.0.0.0:6432
EXPOSE 6432 9187
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD curl -fsS http://127.0.0.1:9187/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgdual"]
CMD ["serve"]
