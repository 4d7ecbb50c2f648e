#!/usr/bin/env bash
# docker/make-env.sh [FILE] — writes the .env docker-compose.yml reads (FILE,
# default .env next to it) with a fresh random secret for every password of
# .env.example, and the other settings as .env.example has them. Refuses to
# overwrite an existing file. Mode 600: the file holds secrets; never commit it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$ROOT/.env}
[ -e "$out" ] && { echo "error: $out exists; remove it first to make new secrets" >&2; exit 1; }
secret() { head -c 18 /dev/urandom | base64 | tr '+/' 'xy'; }
umask 077
# The API's demo client: a token, and its hash for order-api's API_TOKENS.
token=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
while IFS= read -r line; do
    case "$line" in
    *_PASSWORD=) echo "$line$(secret)" ;;
    API_DEMO_TOKEN=) echo "$line$token" ;;
    API_DEMO_TOKEN_SHA256=) echo "$line$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)" ;;
    *) echo "$line" ;;
    esac
done <"$ROOT/.env.example" >"$out"
echo "wrote $out"
