# fusebox: a resilience-focused egress agent.
#   docker build -t fusebox .
#   docker run --rm -p 127.0.0.1:15001:15001 -p 127.0.0.1:9901:9901 \
#     -v "$PWD/policies:/etc/fusebox/policies:ro" fusebox
# Checked by `hadolint Dockerfile` in CI (.ci/run). See the README, "Docker", before publishing
# a port beyond 127.0.0.1.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The allocator's settings (jemalloc's malloc_conf, built in).
COPY .cargo ./.cargo
COPY src ./src
RUN cargo build --release --locked --bin fusebox

FROM debian:bookworm-slim
# The build image's CA bundle: the roots for TLS origination, without apt in the runtime image.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/release/fusebox /usr/local/bin/fusebox
COPY policies /etc/fusebox/policies
# A numeric, unprivileged user: no account, no home, no shell.
USER 10001:10001
# In a container the listeners bind every interface, so that the app's container or pod reaches
# them; publish them on 127.0.0.1 (or a private network) only. The admin API refuses POST
# commands on a non-loopback address unless a token is set: mount one as a secret and point
# FUSEBOX_ADMIN_TOKEN_FILE at it.
ENV FUSEBOX_POLICIES=/etc/fusebox/policies \
    FUSEBOX_LISTEN=0.0.0.0:15001 \
    FUSEBOX_ADMIN=0.0.0.0:9901
VOLUME ["/etc/fusebox/policies"]
EXPOSE 15001 9901
ENTRYPOINT ["/usr/local/bin/fusebox"]
CMD ["run"]
