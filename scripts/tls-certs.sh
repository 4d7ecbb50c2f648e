#!/usr/bin/env bash
# scripts/tls-certs.sh DIR [NAMES] — a local certificate authority and a
# server certificate signed by it, made with openssl, for `make up TLS=1`
# and the TLS tests.
#
# Writes into DIR (kept when already there, so clients that trust the CA keep
# working across `make up`):
#   ca.crt / ca.key          the CA (self-signed, 10 years); ca.crt is what
#                            clients verify the servers with
#   server.crt / server.key  the servers' certificate (RabbitMQ and PostgreSQL)
#
# NAMES is the server certificate's subjectAltName, by default
# "DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1". 127.0.0.1 is listed as a DNS
# name too because rabbitmq-c 0.11's hostname check reads only the DNS
# entries of subjectAltName (libpq reads the IP entry).
set -euo pipefail

dir=${1:?usage: tls-certs.sh DIR [NAMES]}
names=${2:-DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1}
cn=${names%%,*}
cn=${cn#*:}

mkdir -p "$dir"
cd "$dir"
umask 077
if [ ! -s ca.crt ] || [ ! -s ca.key ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -subj "/CN=ordersuite local CA $(date -u +%FT%TZ)" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout ca.key -out ca.crt 2>/dev/null
    rm -f server.crt server.key
fi
# A server certificate that the CA did not sign (the CA was remade) or that
# names other hosts is made again.
if [ ! -s server.crt ] || [ ! -s server.key ] ||
    ! openssl verify -CAfile ca.crt server.crt >/dev/null 2>&1 ||
    [ "$(cat server.names 2>/dev/null)" != "$names" ]; then
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$cn" \
        -keyout server.key -out server.csr 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' \
        "$names" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
        -sha256 -extfile server.ext -out server.crt 2>/dev/null
    rm -f server.csr server.ext
    echo "$names" >server.names
fi
chmod 644 ca.crt server.crt
chmod 600 ca.key server.key
