#!/usr/bin/env bash
# Installs the system packages the test suite needs on Debian 12 (bookworm):
#   - Postfix + Dovecot (the end-to-end tests start private instances; the system
#     daemons must NOT be left running),
#   - PostgreSQL with a `mailwright` role and a `mailwright_test` database,
#   - RabbitMQ and Redis (the scale-out tests start private instances),
#   - Chromium for browser tests, Node.js and npm for their accessibility checks (axe-core).
# Idempotent and quick when everything is already present.
set -Eeuo pipefail

log() { printf 'install-system-deps: %s\n' "$*"; }
die() {
    printf 'install-system-deps: ERROR: %s\n' "$*" >&2
    exit 1
}
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

if [[ ${EUID} -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    die "must run as root (sudo is not available)"
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian 12 only"

as_root() { "${SUDO[@]}" "$@"; }

pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

APT_UPDATED=0
apt_update_once() {
    if [[ ${APT_UPDATED} -eq 0 ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

# A temporary policy-rc.d keeps package maintainer scripts from starting daemons
# (only created if the machine does not already have one).
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_CREATED=0
cleanup() {
    if [[ ${POLICY_RC_CREATED} -eq 1 ]]; then
        as_root rm -f "${POLICY_RC}" || true
    fi
}
trap cleanup EXIT

block_service_starts() {
    if [[ ${POLICY_RC_CREATED} -eq 0 && ! -e ${POLICY_RC} ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "${POLICY_RC}" >/dev/null
        as_root chmod 755 "${POLICY_RC}"
        POLICY_RC_CREATED=1
    fi
}

apt_install() {
    local missing=()
    local p
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    apt_update_once
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# --- Postfix + Dovecot -------------------------------------------------------------
MAIL_PKGS=(postfix dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd)
mail_missing=0
for p in "${MAIL_PKGS[@]}"; do
    pkg_installed "$p" || mail_missing=1
done
if [[ ${mail_missing} -eq 1 ]]; then
    if ! pkg_installed debconf-utils && ! command -v debconf-set-selections >/dev/null 2>&1; then
        apt_install debconf-utils
    fi
    as_root debconf-set-selections <<'EOF'
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string localhost
EOF
    block_service_starts
    apt_install "${MAIL_PKGS[@]}"
    log "postfix and dovecot installed"
else
    log "postfix and dovecot already installed"
fi

# The tests run private instances on 127.0.0.2; the system daemons must not be left
# running by the install (maintainer scripts may start them despite policy-rc.d).
system_postfix_running() { [[ -f /etc/postfix/main.cf ]] && as_root postfix status >/dev/null 2>&1; }
system_dovecot_pid() {
    local pid
    pid="$(cat /run/dovecot/master.pid 2>/dev/null || true)"
    [[ -n ${pid} ]] && kill -0 "${pid}" 2>/dev/null && printf '%s' "${pid}"
}
if [[ ${mail_missing} -eq 1 ]]; then
    if system_postfix_running; then
        log "stopping system postfix started by the package"
        as_root postfix stop >/dev/null 2>&1 || true
    fi
    if dovecot_pid="$(system_dovecot_pid)"; then
        log "stopping system dovecot started by the package"
        as_root doveadm stop >/dev/null 2>&1 || as_root kill "${dovecot_pid}" || true
    fi
else
    # Not started by us; harmless for the tests (they use other addresses and ports).
    system_postfix_running && log "note: a system postfix is running (left alone)"
    system_dovecot_pid >/dev/null && log "note: a system dovecot is running (left alone)"
fi

# --- PostgreSQL ------------------------------------------------------------------------
pg_ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }

if pg_ready; then
    log "postgresql already accepting connections on 127.0.0.1:5432"
else
    apt_install postgresql
    PG_VERSION="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"
    [[ -n ${PG_VERSION} ]] || die "no cluster found under /etc/postgresql"
    if ! as_root pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "${PG_VERSION} main"; then
        log "creating postgresql cluster ${PG_VERSION}/main"
        as_root pg_createcluster "${PG_VERSION}" main >/dev/null
    fi
    if as_root pg_lsclusters -h 2>/dev/null | awk -v v="${PG_VERSION}" '$1 == v && $2 == "main" {print $4}' \
        | grep -q '^online'; then
        log "postgresql ${PG_VERSION}/main is already running; waiting for it"
    else
        log "starting postgresql ${PG_VERSION}/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "${PG_VERSION}" main start \
            || die "pg_ctlcluster ${PG_VERSION} main start failed"
    fi
    for _ in $(seq 1 60); do
        pg_ready && break
        sleep 0.5
    done
    pg_ready || die "postgresql did not become ready on 127.0.0.1:5432 within 30s"
    log "postgresql is ready"
fi

pg_psql() {
    # psql as the postgres OS user over the local unix socket (from / so that the
    # postgres user can always enter the working directory).
    (cd / && as_root runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -qtA "$@")
}

if [[ "$(pg_psql -c "SELECT 1 FROM pg_roles WHERE rolname = 'mailwright'")" == "1" ]]; then
    log "postgresql role mailwright exists"
else
    pg_psql -c "CREATE ROLE mailwright LOGIN CREATEDB PASSWORD 'mailwright'" >/dev/null \
        || die "could not create role mailwright"
    log "created postgresql role mailwright"
fi
# Make sure the password and attributes are what the tests expect (cheap, idempotent).
pg_psql -c "ALTER ROLE mailwright LOGIN CREATEDB PASSWORD 'mailwright'" >/dev/null \
    || die "could not update role mailwright"

if [[ "$(pg_psql -c "SELECT 1 FROM pg_database WHERE datname = 'mailwright_test'")" == "1" ]]; then
    log "postgresql database mailwright_test exists"
else
    pg_psql -c "CREATE DATABASE mailwright_test OWNER mailwright" >/dev/null \
        || die "could not create database mailwright_test"
    log "created postgresql database mailwright_test"
fi

# --- RabbitMQ and Redis ----------------------------------------------------------------
# The scale-out tests start private instances (their own ports and data directories), so
# only the packages are needed; a system server already running is left alone.
if pkg_installed rabbitmq-server && pkg_installed redis-server; then
    log "rabbitmq-server and redis-server already installed"
else
    block_service_starts
    apt_install rabbitmq-server redis-server
    log "rabbitmq-server and redis-server installed"
fi

# --- Chromium -------------------------------------------------------------------------
if [[ -x /usr/bin/chromium ]]; then
    log "chromium already installed"
else
    apt_install chromium
    [[ -x /usr/bin/chromium ]] || die "chromium installed but /usr/bin/chromium is missing"
    log "chromium installed"
fi

# --- Node.js and npm ----------------------------------------------------------------------
# Only for `npm ci --prefix tests/axe` (axe-core, injected into pages by the browser tests).
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    log "node $(node --version) and npm already installed"
else
    apt_install nodejs npm
    command -v npm >/dev/null 2>&1 || die "nodejs and npm installed but npm is missing"
    log "nodejs and npm installed"
fi

log "done"
