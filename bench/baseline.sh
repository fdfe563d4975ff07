#!/usr/bin/env bash
# The seed's release procedure, by hand: what `make bench` compares the release flow with.
#
#   bench/baseline.sh ENVIRONMENT CONTEXT VERSION
#
#   ENVIRONMENT  container names: ENVIRONMENT-api, ENVIRONMENT-worker-0..N-1
#   CONTEXT      build context (the example backend, or a changed copy of it)
#   VERSION      image tag and the version /health must report
#
# Environment (secrets come from the environment or stdin and are never printed):
#   DATABASE_URL         PostgreSQL URL for the migration, the API and the workers (required)
#   REGISTRY_PASSWORD    password of REGISTRY_USER (default: read from stdin)
#   REGISTRY_USER        registry user (default: release)
#   IMAGE_REPOSITORY     where the image goes (default: 127.0.0.1:5000/tests/backend)
#   API_PORT             port the API listens on, host networking (default: 8000)
#   WORKERS              Celery workers to run (default: 2)
#   HEALTH_INTERVAL      seconds between /health polls (default: 1)
#   HEALTH_TIMEOUT       seconds to wait for /health to answer 200 with VERSION (default: 60)
#   DOCKER_CLI           the docker command (default: docker), one that builds with BuildKit
#
# Steps, as the seed runs them: docker build, docker login + push, alembic upgrade head in a
# one-off container, replace the API container, replace the workers, poll /health. The
# containers run as targets/docker_host.py runs them (host network, PORT, APP_ENVIRONMENT,
# restart unless-stopped), so the flow and this script do the same work.
set -euo pipefail

if [ "$#" -ne 3 ]; then
    sed -n '2,19p' "$0" >&2
    exit 2
fi
environment="$1" context="$2" version="$3"
: "${DATABASE_URL:?DATABASE_URL must be set (it is passed to the containers, never printed)}"
if [ -z "${REGISTRY_PASSWORD:-}" ]; then
    IFS= read -r REGISTRY_PASSWORD
fi
repository="${IMAGE_REPOSITORY:-127.0.0.1:5000/tests/backend}"
image="$repository:$version"
port="${API_PORT:-8000}"
workers="${WORKERS:-2}"
interval="${HEALTH_INTERVAL:-1}"
timeout="${HEALTH_TIMEOUT:-60}"
export DATABASE_URL

# The login lives in a throw-away client config, not in the caller's ~/.docker.
DOCKER_CONFIG="$(mktemp -d)"
export DOCKER_CONFIG
trap 'rm -rf "$DOCKER_CONFIG"' EXIT
# BuildKit, as the flow builds: DOCKER_CLI names a Docker CLI that builds with it (Debian's
# docker.io, or one with the buildx plugin; bench/run.py passes the one the flow uses).
export DOCKER_BUILDKIT=1
docker() { command "${DOCKER_CLI:-docker}" "$@"; }

log() { printf '[baseline] %s\n' "$*" >&2; }
run_env=(--network host -e DATABASE_URL -e "PORT=$port" -e "APP_ENVIRONMENT=$environment")

log "build $image"
docker build --quiet --network host --build-arg "APP_VERSION=$version" -t "$image" "$context" \
    >/dev/null
log "push $image"
printf '%s' "$REGISTRY_PASSWORD" |
    docker login --username "${REGISTRY_USER:-release}" --password-stdin "${repository%%/*}" \
        >/dev/null
docker push --quiet "$image" >/dev/null
log "migrate"
docker run --rm --network host -e DATABASE_URL "$image" alembic upgrade head
log "replace the API"
docker rm -f "$environment-api" >/dev/null 2>&1 || true
docker run -d --name "$environment-api" "${run_env[@]}" --restart unless-stopped "$image" \
    >/dev/null
log "replace the workers ($workers)"
old_workers="$(docker ps -aq --filter "name=^$environment-worker-")"
if [ -n "$old_workers" ]; then
    # shellcheck disable=SC2086 # one id per word
    docker rm -f $old_workers >/dev/null
fi
for ((i = 0; i < workers; i++)); do
    docker run -d --name "$environment-worker-$i" "${run_env[@]}" --restart unless-stopped \
        "$image" celery -A app.worker worker --loglevel=info >/dev/null
done
log "poll http://127.0.0.1:$port/health for $version"
deadline=$((SECONDS + timeout))
until curl -fsS --max-time 5 "http://127.0.0.1:$port/health" 2>/dev/null |
    grep -q "\"version\":\"$version\""; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "the API did not answer healthy with $version within $timeout s"
        exit 1
    fi
    sleep "$interval"
done
log "released $version to $environment"
