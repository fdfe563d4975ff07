"""Logging in to the registry through a real fault proxy: a connection reset is transient
(the push task retries it), refused credentials are not. The proxy listens on a port whose
digits contain "401", as the addresses in the engine's error message sometimes do (the
intermittent "registry refused the credentials" seen in CI)."""

import socket
import uuid

import pytest
from prefect_docker import DockerRegistryCredentials

from targets.errors import AuthenticationError
from targets.registry import login, registry_auth
from tasks.push import push
from tests.faults import HttpFaultProxy
from tests.releases import tiny_image as make_tiny_image

pytestmark = [pytest.mark.docker, pytest.mark.faults]


def free_port_with_401() -> int:
    for port in (*range(14010, 14020), *range(24010, 24020), *range(34010, 34020)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port containing 401")


@pytest.fixture
def proxy(registry):
    host, port = registry.address.split(":")
    proxy = HttpFaultProxy((host, int(port)), port=free_port_with_401())
    yield proxy
    proxy.close()


def login_request(method: str, target: str, body: bytes) -> bool:
    return (method, target) == ("GET", "/v2/")


@pytest.fixture
def tiny_image(engine, proxy):
    """A one-file image of its own, tagged for the registry behind the proxy."""
    # A repository of its own: the tag must not already hold an earlier run's image.
    reference = f"127.0.0.1:{proxy.port}/tests/login-reset-{uuid.uuid4().hex[:8]}:v1"
    make_tiny_image(engine, reference)
    yield reference
    engine.images.remove(reference, force=True)


def test_a_login_whose_connection_is_reset_is_retried_and_the_push_succeeds(
    proxy, registry, tiny_image
):
    proxy.reset(times=2, match=login_request)
    credentials = DockerRegistryCredentials(
        username=registry.username,
        password=registry.password,
        registry_url=f"127.0.0.1:{proxy.port}",
    )

    pinned = push(tiny_image, credentials)

    assert pinned.startswith(tiny_image.split(":v1")[0] + "@sha256:")
    assert proxy.injected == ["GET /v2/", "GET /v2/"]  # two logins reset, the third passed


def test_refused_credentials_through_the_same_proxy_stay_an_authentication_error(
    proxy, engine, registry
):
    with pytest.raises(AuthenticationError, match="refused the credentials"):
        login(engine, f"127.0.0.1:{proxy.port}", registry_auth(registry.username, "wrong"))
