#!/usr/bin/env bash
# scripts/deps.sh — install the Debian packages ordersuite needs.
#
# Skips what is installed. As root it installs; otherwise it prints the
# command to run with sudo and fails.
set -eu

PACKAGES=(
    # build
    gcc make pkg-config clang libclang-rt-14-dev clang-format cppcheck
    # libraries
    librabbitmq-dev libpq-dev libmicrohttpd-dev libcjson-dev check libcurl4-openssl-dev libssl-dev
    # servers and their clients
    rabbitmq-server postgresql postgresql-client
    # used by the scripts and tests
    curl procps iproute2 util-linux python3 python3-yaml openssl
    # the board's browser test (tests/board_check.py): Debian's browser, and
    # node for playwright-core (installed below, into tests/browser, with npm)
    chromium nodejs
    # the mail catcher (tools/mailcatcher): make demo, check_mail, make chaos
    python3-aiosmtpd
    # make bench
    gnuplot-nox wrk
    # make compose-test: a Docker engine, Compose, and debootstrap for the base image
    docker.io docker-compose debootstrap
    # check_db runs the server in German (lc_messages) to show that errors are
    # classified by SQLSTATE, not by English text: the locale below
    locales
)

# The German locale check_db's server answers in (ensure_locale, below).
TEST_LOCALE=de_DE.UTF-8

# ensure_locale: generates TEST_LOCALE when the system lacks it (localedef,
# from the locales package; /etc/locale.gen is left alone). A PostgreSQL
# started before it cannot load it until restarted (check_db restarts it).
ensure_locale() {
    locale -a 2>/dev/null | grep -qix "${TEST_LOCALE/UTF-8/utf8}" && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "error: the locale $TEST_LOCALE is missing; run:" >&2
        echo "  sudo localedef -i ${TEST_LOCALE%%.*} -f UTF-8 $TEST_LOCALE" >&2
        return 1
    fi
    localedef -i "${TEST_LOCALE%%.*}" -f UTF-8 "$TEST_LOCALE"
    echo "==> deps: generated the locale $TEST_LOCALE"
}

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

# browser_deps: playwright-core, pinned by tests/browser/package-lock.json,
# into tests/browser/node_modules (npm ci; never a browser: the test uses
# /usr/bin/chromium). Skipped when that exact version is already there.
browser_deps() {
    local dir want have
    dir="$(cd "$(dirname "$0")/.." && pwd)/tests/browser"
    want=$(sed -n 's/.*"playwright-core": "\([0-9.]*\)".*/\1/p' "$dir/package.json")
    have=$(sed -n 's/.*"version": "\([0-9.]*\)".*/\1/p' \
        "$dir/node_modules/playwright-core/package.json" 2>/dev/null | head -1)
    [ -n "$want" ] && [ "$want" = "$have" ] && return 0
    # Debian's nodejs comes without npm (NodeSource's has it and conflicts with it).
    if ! command -v npm >/dev/null; then
        [ "$(id -u)" = 0 ] || {
            echo "error: npm is missing; run: sudo apt-get update && sudo apt-get install -y npm" >&2
            return 1
        }
        # Reached also when every package was already there (no update ran).
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm
    fi
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --ignore-scripts)
    echo "==> deps: playwright-core $want in tests/browser/node_modules"
}

if [ ${#missing[@]} -eq 0 ]; then
    echo "==> deps: all ${#PACKAGES[@]} packages installed"
    ensure_locale
    browser_deps
    exit
fi

echo "==> deps: missing ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
    echo "error: installing packages needs root; run:" >&2
    # npm too when it is missing: browser_deps needs it after these.
    command -v npm >/dev/null || missing+=(npm)
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Debian's rabbitmq-server and postgresql start system-wide servers on the
# standard ports where systemd runs; the project uses its own (make up), so
# ask the package scripts not to start anything.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
trap '[ $made_policy = 1 ] && rm -f "$policy"' EXIT

apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "==> deps: installed ${missing[*]}"
ensure_locale
browser_deps
