# syntax=docker/dockerfile:1
#
# The hippo-gitops image: the controller and CLI on Debian bookworm-slim, with `git` (the
# controller clones and fetches Git sources with the git command), openssh-client (for ssh://
# and git@host: URLs) and CA certificates. Runs as uid/gid 10001.
#
#   docker build -t ghcr.io/hippo-gitops/hippo-gitops:0.1.0 \
#     --build-arg HIPPO_GITOPS_GIT_REV="$(git rev-parse --short=12 HEAD)" .
#   docker run --rm ghcr.io/hippo-gitops/hippo-gitops:0.1.0 validate -f /deploy-specs   # (mounted)
#
# Charts and jobs that run it: charts/hippo-gitops (Helm), charts/nomad (Nomad).

# The crate's rust-version (Cargo.lock's uuid 1.29 and the time/icu crates need 1.89).
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Dependencies first, in their own layer: a change to the sources alone does not rebuild them.
# Stub targets stand in for each crate's sources (the real ones come in the next layer).
COPY Cargo.toml Cargo.lock ./
COPY crates/core/Cargo.toml crates/core/
COPY crates/controller/Cargo.toml crates/controller/
COPY crates/emulators/Cargo.toml crates/emulators/
COPY crates/cli/Cargo.toml crates/cli/
COPY crates/bench/Cargo.toml crates/bench/
COPY crates/testkit/Cargo.toml crates/testkit/
RUN for crate in core controller emulators cli bench testkit; do \
        mkdir -p "crates/$crate/src" && touch "crates/$crate/src/lib.rs"; \
    done \
    && echo 'fn main() {}' > crates/cli/src/main.rs \
    && echo 'fn main() {}' > crates/bench/src/main.rs \
    && cargo build --release --locked -p hippo-gitops --no-default-features \
    && rm -rf crates target/release/.fingerprint/hippo-gitops* target/release/deps/hippo_gitops* \
       target/release/deps/libhippo_gitops* target/release/hippo-gitops*

# `hippo-gitops --version` shows this revision (.git is not in the build context).
ARG HIPPO_GITOPS_GIT_REV=""
ENV HIPPO_GITOPS_GIT_REV=${HIPPO_GITOPS_GIT_REV}
COPY crates ./crates
# Without the `sandbox` feature: no emulators in the image (`--version` says "no sandbox").
RUN cargo build --release --locked -p hippo-gitops --no-default-features --bin hippo-gitops \
    && strip target/release/hippo-gitops \
    && ./target/release/hippo-gitops --version

FROM debian:bookworm-slim AS runtime
# DL3008 (pin apt package versions) is ignored on purpose: bookworm is a stable release whose
# packages change only for security and point-release fixes, and the archive keeps only the
# current version of each, so a pinned version stops installing the day Debian ships a fix. The
# unpinned install takes the patched git/openssh of the day, which is what a runtime image wants.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hippo-gitops \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/hippo-gitops \
       --shell /usr/sbin/nologin hippo-gitops \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/hippo-gitops

COPY --from=builder /src/target/release/hippo-gitops /usr/local/bin/hippo-gitops

# The state dir (Git clones, the last applied commit, a generated signing key) is also the
# user's HOME; mount a volume there to keep it. The controller listens on all interfaces in a
# container (its own default is 127.0.0.1:9090).
ENV HIPPO_GITOPS_STATE_DIR=/var/lib/hippo-gitops \
    HIPPO_GITOPS_LISTEN=0.0.0.0:9090
WORKDIR /var/lib/hippo-gitops
USER 10001:10001
EXPOSE 9090

ENTRYPOINT ["hippo-gitops"]
CMD ["reconcile", "--help"]
