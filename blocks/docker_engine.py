"""The Docker engine a DockerHost block names, as a client (close it after use)."""

import docker
import docker.errors
from prefect_docker import DockerHost

from targets.errors import TransientError


def engine_client(docker_host: DockerHost | None) -> docker.DockerClient:
    """A client of the engine `docker_host` names (default: the local one)."""
    try:
        return (docker_host or DockerHost()).get_client()
    except docker.errors.DockerException as exc:
        raise TransientError(
            f"cannot reach the Docker engine ({exc}): start it (scripts/services.sh docker) "
            "or fix the DockerHost block"
        ) from None
