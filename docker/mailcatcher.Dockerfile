# The demo's mail catcher: SMTP on 1025, web page and JSON API on 8025
# (docker/mailcatcher.py on Debian's python3-aiosmtpd).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-aiosmtpd \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10002 --home-dir /nonexistent --shell /usr/sbin/nologin mailcatcher
COPY docker/mailcatcher.py /usr/local/bin/mailcatcher.py
USER mailcatcher
EXPOSE 1025 8025
CMD ["python3", "/usr/local/bin/mailcatcher.py"]
