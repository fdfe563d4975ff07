"""Where the real services the tests use are (started by scripts/services.sh).

A missing service is a failure, never a skip: CI must have started it.
"""

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx
import psycopg

STATE_DIR = Path(os.environ.get("RELEASE_STATE_DIR", "/var/lib/rhesis-release"))
REGISTRY_ADDR = os.environ.get("RELEASE_REGISTRY_ADDR", "127.0.0.1:5000")
REGISTRY_USER = os.environ.get("RELEASE_REGISTRY_USER", "release")
PG_PORT = int(os.environ.get("RELEASE_PG_PORT", "5432"))
PG_USER = os.environ.get("RELEASE_PG_USER", "release")
HINT = "start the services first: sudo scripts/services.sh all"
SOCKET_DIR = "/var/run/postgresql"


@dataclass(frozen=True)
class Registry:
    address: str
    username: str
    password: str = field(repr=False)  # never in test output

    def manifest_digest(self, repository: str, tag: str) -> str | None:
        """The digest the registry serves for repository:tag (None: no such tag)."""
        response = httpx.head(
            f"http://{self.address}/v2/{repository}/manifests/{tag}",
            auth=(self.username, self.password),
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"]


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    password: str = field(repr=False)  # never in test output

    def url(self, database: str, host: str = "127.0.0.1") -> str:
        return f"postgresql://{self.user}:{self.password}@{host}:{self.port}/{database}"

    def socket_url(self, database: str) -> str:
        """The URL over PostgreSQL's Unix socket (mounted into bridge-network containers)."""
        return (
            f"postgresql://{self.user}:{self.password}@/{database}"
            f"?host={SOCKET_DIR}&port={self.port}"
        )

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url(self.user), autocommit=True)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f'create database "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop `name`, ending its sessions. When PostgreSQL will not let this role end one
        of them (InsufficientPrivilege, seen once under load; which session it was is not
        known), it is waited out, up to ~10 s."""
        for attempt in range(20):
            try:
                with self.admin() as conn:
                    conn.execute(f'drop database if exists "{name}" with (force)')
                return
            except psycopg.errors.InsufficientPrivilege:
                if attempt == 19:
                    raise
                time.sleep(0.5)

    def query(self, database: str, sql: str, *params) -> list[tuple]:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()


def _read(path: Path) -> str:
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: {HINT}")
    return path.read_text().strip()


def docker_engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise RuntimeError(f"no Docker engine answers ({exc}): {HINT}") from None
    return client


def registry() -> Registry:
    reg = Registry(REGISTRY_ADDR, REGISTRY_USER, _read(STATE_DIR / "registry" / "password"))
    try:
        status = httpx.get(f"http://{reg.address}/v2/").status_code
    except httpx.HTTPError as exc:
        raise RuntimeError(f"registry {reg.address} does not answer ({exc}): {HINT}") from None
    if status != 401:
        raise RuntimeError(f"registry {reg.address} answers {status}, expected 401 (auth on)")
    return reg


def postgres() -> Postgres:
    pg = Postgres(PG_PORT, PG_USER, _read(STATE_DIR / "postgres-password"))
    try:
        pg.admin().close()
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"PostgreSQL does not answer ({exc}): {HINT}") from None
    return pg


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
