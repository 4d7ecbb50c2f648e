# The demo's mail catcher, the one `make demo` runs (tools/mailcatcher, on
# Debian's python3-aiosmtpd): SMTP on 1025, web page and JSON API on 1080.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-aiosmtpd \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10002 --home-dir /nonexistent --shell /usr/sbin/nologin mailcatcher
COPY tools/mailcatcher/mailcatcher.py /usr/local/bin/mailcatcher.py
USER mailcatcher
EXPOSE 1025 1080
CMD ["python3", "/usr/local/bin/mailcatcher.py", "--bind", "0.0.0.0", "--smtp-port", "1025", "--http-port", "1080"]
