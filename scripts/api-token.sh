#!/usr/bin/env bash
# scripts/api-token.sh CLIENT [FILE] — a new bearer token for order-api.
#
# Appends "CLIENT <sha256 of the token, hex>" to FILE (default
# var/api-tokens, the file `make demo` gives order-api as API_TOKENS_FILE)
# and prints the token once on stdout: only its hash is kept. CLIENT is the
# client id the token's orders belong to (1-64 of A-Z a-z 0-9 . _ -); one
# client may have several tokens. order-api reads the file when it starts:
# restart it (make demo-stop && make demo) to use a new token.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
client=${1:-}
file=${2:-$ROOT/var/api-tokens}
[[ "$client" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || {
    echo "usage: scripts/api-token.sh CLIENT [FILE]  (CLIENT: 1-64 of A-Z a-z 0-9 . _ -)" >&2
    exit 2
}
# 32 random bytes, base64url without padding: 43 characters.
token=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
hash=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
(
    umask 077
    [ -f "$file" ] || echo "# order-api bearer tokens: CLIENT SHA256-HEX (scripts/api-token.sh)" >"$file"
    echo "$client $hash" >>"$file"
)
echo "$token"
