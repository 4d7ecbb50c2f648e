# RabbitMQ 3.10 with the management plugin, from Debian's rabbitmq-server:
# the same version `make up` runs. The broker-init job (same image) writes the
# definitions the broker loads at boot: users and permissions from
# scripts/broker-perms.sh, as the local path sets them (docker/broker-definitions.sh).
FROM debian:bookworm-slim
# policy-rc.d: the package's scripts must not try to start the server.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server curl \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
 && mkdir -p /definitions /var/lib/rabbitmq/mnesia \
 && chown rabbitmq:rabbitmq /definitions /var/lib/rabbitmq /var/lib/rabbitmq/mnesia \
 && echo '[rabbitmq_management].' >/etc/rabbitmq/enabled_plugins
COPY docker/rabbitmq.conf /etc/rabbitmq/rabbitmq.conf
COPY scripts/suite.sh scripts/broker-perms.sh docker/broker-definitions.sh /ordersuite/
# What each service may read on sales.events comes from its routes[] table
# (service_keys in broker-perms.sh).
COPY contracts/events.h /ordersuite/contracts/
COPY services /ordersuite/services
ENV HOME=/var/lib/rabbitmq PATH=/usr/lib/rabbitmq/bin:$PATH
USER rabbitmq
EXPOSE 5672 15672
CMD ["rabbitmq-server"]
