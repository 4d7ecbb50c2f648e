# ordersuite — one image with every executable, the migrations and the
# container scripts. Build stage: Debian bookworm-slim with the packages that
# `make deps` installs for building; runtime: bookworm-slim with only the
# shared libraries, as a non-root user.

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      gcc make pkg-config \
      librabbitmq-dev libpq-dev libmicrohttpd-dev libcjson-dev check libcurl4-openssl-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY common common
COPY contracts contracts
COPY services services
COPY tools tools
RUN make -j"$(nproc)" all ORDERSUITE_VERSION=docker

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      librabbitmq4 libpq5 libmicrohttpd12 libcjson1 libcurl4 libssl3 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin ordersuite \
 && install -d -o ordersuite -g ordersuite -m 0750 /var/lib/ordersuite/pos
WORKDIR /app
COPY --from=build /src/build/bin/ /usr/local/bin/
COPY migrations migrations
COPY docker/migrate.sh docker/migrate.sh
COPY scripts/suite.sh scripts/suite.sh
USER ordersuite
# Each service in docker-compose.yml names its executable as the command.
CMD ["order-api"]
