#!/usr/bin/env bash
# Install and start the real services the tests and the demo need, idempotently:
# a Docker engine, an htpasswd-protected registry on 127.0.0.1, PostgreSQL, and a
# python:3.11-slim base image (a local stand-in when it cannot be pulled); `browser` adds
# Debian's Chromium and its WebDriver for the UI tests (`make test` asks for it).
#
#   scripts/services.sh [all|docker|registry|postgres|base-image|browser|env]...
#
# Everything it generates (registry password, data) lives under $RELEASE_STATE_DIR
# (default /var/lib/rhesis-release), never in the repository.
set -euo pipefail

STATE_DIR="${RELEASE_STATE_DIR:-/var/lib/rhesis-release}"
REGISTRY_ADDR="${RELEASE_REGISTRY_ADDR:-127.0.0.1:5000}"
REGISTRY_USER="${RELEASE_REGISTRY_USER:-release}"
PG_PORT="${RELEASE_PG_PORT:-5432}"
PG_USER="${RELEASE_PG_USER:-release}"
BASE_IMAGE="python:3.11-slim"

log() { printf '[services] %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        log "must run as root to install packages and start daemons (try: sudo $0 $*)"
        exit 1
    fi
}

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]}"
    if [ ! -f "$STATE_DIR/.apt-updated" ]; then
        apt-get update -qq
        mkdir -p "$STATE_DIR" && touch "$STATE_DIR/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

wait_for() {  # wait_for DESCRIPTION SECONDS COMMAND...
    local what="$1" deadline=$((SECONDS + $2)); shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$what did not come up; see the log named above"
            return 1
        fi
        sleep 0.5
    done
}

start_docker() {
    if docker info >/dev/null 2>&1; then log "docker engine: already running"; return 0; fi
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    command -v docker >/dev/null 2>&1 || apt_install docker.io
    log "docker engine: starting dockerd (log: /var/log/dockerd.log)"
    setsid nohup dockerd --host unix:///var/run/docker.sock >/var/log/dockerd.log 2>&1 </dev/null &
    wait_for "dockerd" 60 docker info
}

start_registry() {
    apt_install docker-registry python3-bcrypt curl
    local dir="$STATE_DIR/registry"
    mkdir -p "$dir/data"
    if [ ! -s "$dir/password" ]; then
        head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$dir/password"
        chmod 600 "$dir/password"
        rm -f "$dir/htpasswd"
    fi
    # Cloud registries log in with short-lived tokens: user `oauth2accesstoken` + an OAuth
    # access token (Artifact Registry), user `AWS` + the ECR authorization token. The local
    # stand-ins for their token endpoints hand out these values, so the registry accepts them.
    if [ ! -s "$dir/gcp-token" ]; then
        printf 'ya29.local-%s' "$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" >"$dir/gcp-token"
        chmod 600 "$dir/gcp-token"
        rm -f "$dir/htpasswd"
    fi
    [ -s "$dir/ecr-token" ] || printf '123456789012-auth-token' >"$dir/ecr-token"
    if [ ! -s "$dir/htpasswd" ]; then
        REG_USER="$REGISTRY_USER" REG_DIR="$dir" /usr/bin/python3 - >"$dir/htpasswd" <<'PY'
import os, bcrypt
d = os.environ["REG_DIR"]
users = {os.environ["REG_USER"]: "password", "oauth2accesstoken": "gcp-token", "AWS": "ecr-token"}
# bcrypt cost 8, not 12: this registry only listens on loopback for tests and the demo, and
# it checks the password on every request (cost 12 is ~0.5 s per request here).
for user, name in users.items():
    pw = open(os.path.join(d, name)).read().strip().encode()
    print(f"{user}:{bcrypt.hashpw(pw, bcrypt.gensalt(rounds=8)).decode()}")
PY
        # A running registry read the old file: restart it.
        pkill -f "docker-registry serve $dir/config.yml" 2>/dev/null && sleep 1 || true
    fi
    cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
auth:
  htpasswd:
    realm: rhesis-release
    path: $dir/htpasswd
YAML
    if curl -s -o /dev/null -w '%{http_code}' "http://$REGISTRY_ADDR/v2/" | grep -q 401; then
        log "registry: already answering on $REGISTRY_ADDR"
    else
        log "registry: starting on $REGISTRY_ADDR (log: $dir/registry.log)"
        setsid nohup docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 </dev/null &
        wait_for "registry" 30 sh -c "curl -s -o /dev/null -w '%{http_code}' http://$REGISTRY_ADDR/v2/ | grep -q 401"
    fi
}

start_postgres() {
    apt_install postgresql
    local version cluster
    version="$(pg_lsclusters -h | awk 'NR==1{print $1}')"
    cluster="$(pg_lsclusters -h | awk 'NR==1{print $2}')"
    if [ -z "$version" ]; then
        version="$(ls /usr/lib/postgresql | sort -n | tail -1)"; cluster=main
        pg_createcluster "$version" "$cluster" --port "$PG_PORT" >/dev/null
    fi
    if pg_lsclusters -h | awk -v c="$cluster" '$2==c{print $4}' | grep -q online; then
        log "postgresql $version/$cluster: already running"
    else
        log "postgresql $version/$cluster: starting"
        pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start
    fi
    wait_for "postgresql" 30 su postgres -c "psql -p $PG_PORT -Atc 'select 1'"
    # Many concurrent test databases and Celery broker connections: raise the cap once.
    local max
    max="$(su postgres -c "psql -p $PG_PORT -Atc 'show max_connections'")"
    if [ "$max" -lt 300 ]; then
        su postgres -c "psql -p $PG_PORT -qc 'alter system set max_connections = 300'"
        pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" restart
        wait_for "postgresql" 30 su postgres -c "psql -p $PG_PORT -Atc 'select 1'"
    fi
    # The release user may also log in with its password over the Unix socket, as a
    # container on a bridge network does when /var/run/postgresql is mounted into it.
    local hba
    hba="$(su postgres -c "psql -p $PG_PORT -Atc 'show hba_file'")"
    if ! grep -q "^local[[:space:]]\+all[[:space:]]\+$PG_USER[[:space:]]" "$hba"; then
        sed -i "0,/^local/s//local   all             $PG_USER                                 scram-sha-256\n&/" "$hba"
        su postgres -c "psql -p $PG_PORT -qAtc 'select pg_reload_conf()'" >/dev/null
    fi
    local pwfile="$STATE_DIR/postgres-password"
    mkdir -p "$STATE_DIR"
    if [ ! -s "$pwfile" ]; then
        head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$pwfile"
        chmod 600 "$pwfile"
    fi
    local pw; pw="$(cat "$pwfile")"
    su postgres -c "psql -p $PG_PORT -qAt" <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB;
  END IF;
END \$\$;
ALTER ROLE $PG_USER WITH LOGIN CREATEDB PASSWORD '$pw';
SQL
    su postgres -c "psql -p $PG_PORT -Atc \"select 1 from pg_database where datname='$PG_USER'\"" | grep -q 1 \
        || su postgres -c "createdb -p $PG_PORT -O $PG_USER $PG_USER"
}

build_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE: present"; return 0
    fi
    if timeout 60 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE: pulled"; return 0
    fi
    log "base image $BASE_IMAGE: cannot be pulled; building a Debian bookworm stand-in (~1 min)"
    apt_install debootstrap
    local root; root="$(mktemp -d /tmp/rhesis-base.XXXXXX)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" http://deb.debian.org/debian >/tmp/rhesis-debootstrap.log 2>&1 \
        || { log "debootstrap failed: see /tmp/rhesis-debootstrap.log"; return 1; }
    # The official image lets pip install into the system interpreter and calls it `python`.
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    ln -sf python3 "$root/usr/bin/python"
    # Outbound HTTPS passes a TLS-inspecting proxy: trust the host's CA bundle inside images.
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
        --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    log "base image $BASE_IMAGE: built locally"
}

install_browser() {
    # Debian's builds only: no browser download works here (the UI tests drive these).
    apt_install chromium chromium-driver
    log "browser: $(chromium --version 2>/dev/null), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
}

print_env() {
    # Connection settings for the tests and the demo (secrets stay in files under $STATE_DIR).
    echo "RELEASE_STATE_DIR=$STATE_DIR"
    echo "RELEASE_REGISTRY_ADDR=$REGISTRY_ADDR"
    echo "RELEASE_REGISTRY_USER=$REGISTRY_USER"
    echo "RELEASE_PG_PORT=$PG_PORT"
    echo "RELEASE_PG_USER=$PG_USER"
}

main() {
    local what
    for what in "${@:-all}"; do
        service "$what"
    done
}

service() {
    case "$1" in
        docker) need_root; start_docker ;;
        registry) need_root; start_registry ;;
        postgres) need_root; start_postgres ;;
        base-image) need_root; start_docker; build_base_image ;;
        env) print_env ;;
        browser) need_root; install_browser ;;
        all) need_root; start_docker; start_registry; start_postgres; build_base_image ;;
        *) log "unknown service '$1': use all, docker, registry, postgres, base-image, browser or env"; exit 2 ;;
    esac
}

main "$@"
