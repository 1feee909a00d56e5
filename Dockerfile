# fusebox: a resilience-focused egress agent.
#   docker build -t fusebox .
#   docker run --rm -p 15001:15001 -p 9901:9901 -v "$PWD/policies:/etc/fusebox/policies:ro" fusebox

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin fusebox

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fusebox
COPY --from=build /src/target/release/fusebox /usr/local/bin/fusebox
COPY policies /etc/fusebox/policies
USER 10001:10001
# In a container the listeners must bind all interfaces to be reachable from the app's
# container or pod; keep the admin port off any public network.
ENV FUSEBOX_POLICIES=/etc/fusebox/policies \
    FUSEBOX_LISTEN=0.0.0.0:15001 \
    FUSEBOX_ADMIN=0.0.0.0:9901
VOLUME ["/etc/fusebox/policies"]
EXPOSE 15001 9901
ENTRYPOINT ["/usr/local/bin/fusebox"]
CMD ["run"]
