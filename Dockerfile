# plumb daemon image.
#
#   docker build -t plumb .                 # where images can be pulled: builds plumb in rust:1
#   integration/daemon-image                # offline: FROM locally built Debian images
#
# The build stage reuses target/release/plumb when it is in the context (built on a Debian
# bookworm-compatible machine), else compiles it. The runtime needs only git (the source
# mirror) and the OpenSSH client (the transport).
ARG BUILDER=rust:1-bookworm
ARG RUNTIME=debian:bookworm-slim

FROM ${BUILDER} AS build
WORKDIR /src
COPY . .
RUN if [ -x target/release/plumb ]; then cp target/release/plumb /plumb; \
    else cargo build --release --locked && cp target/release/plumb /plumb; fi

FROM ${RUNTIME}
# Optional: a Debian source line for bases that have none (debootstrap images).
ARG APT_SOURCE=
RUN set -eu; \
    if [ -n "$APT_SOURCE" ]; then echo "$APT_SOURCE" > /etc/apt/sources.list; fi; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git openssh-client ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --system --home-dir /var/lib/plumb --create-home --shell /usr/sbin/nologin plumb; \
    chmod 0700 /var/lib/plumb
COPY --from=build /plumb /usr/local/bin/plumb
USER plumb
WORKDIR /var/lib/plumb
VOLUME ["/var/lib/plumb"]
EXPOSE 9940
# Mount the config (listen: 0.0.0.0:9940 inside a container), the allowed-signers file and
# the SSH key/known_hosts under /etc/plumb.
ENTRYPOINT ["/usr/local/bin/plumb"]
CMD ["daemon", "--config", "/etc/plumb/daemon.yaml"]
