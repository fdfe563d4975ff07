# The release flows, packaged: the image a `docker` work pool's flow containers run.
# prefect.docker.yaml builds and pushes it (README, "Run on a Docker work pool").
FROM python:3.11-slim

# The Docker-host target builds with the Docker CLI (BuildKit through DOCKER_BUILDKIT=1, see
# targets/build.py): Debian's docker.io 20.10 client binary only, not its daemon. git: sources
# given as a git URL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && cd /tmp && apt-get download docker.io \
    && dpkg-deb --fsys-tarfile docker.io_*.deb | tar -x -C / ./usr/bin/docker \
    && rm -rf /tmp/docker.io_*.deb /var/lib/apt/lists/*

WORKDIR /opt/rhesis-release
# The dependencies first, in a layer that outlives code changes; then the code.
COPY pyproject.toml .
RUN python -c "import tomllib; [print(d) for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']]" \
        > /tmp/requirements.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY . .
ENV PYTHONPATH=/opt/rhesis-release \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
