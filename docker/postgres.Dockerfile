# PostgreSQL 15 from Debian's postgresql-15, the version `make up` runs.
# docker/postgres-entry.sh makes the cluster on first start with the settings
# of scripts/up.sh and the migration owner role; `migrate` does the rest.
FROM debian:bookworm-slim
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
 && pg_dropcluster 15 main \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql \
 && chmod 700 /var/lib/postgresql/data
COPY docker/postgres-entry.sh /ordersuite/postgres-entry.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
CMD ["bash", "/ordersuite/postgres-entry.sh"]
