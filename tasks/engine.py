"""A Docker engine client from a DockerHost block, closed after use."""

from collections.abc import Iterator
from contextlib import contextmanager

import docker
import docker.errors
from prefect_docker import DockerHost

from targets.errors import TransientError


@contextmanager
def engine_client(docker_host: DockerHost | None) -> Iterator[docker.DockerClient]:
    try:
        client = (docker_host or DockerHost()).get_client()
    except docker.errors.DockerException as exc:
        raise TransientError(
            f"cannot reach the Docker engine ({exc}): start it (scripts/services.sh docker) "
            "or fix the DockerHost block"
        ) from None
    try:
        yield client
    finally:
        client.close()
