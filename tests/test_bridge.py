"""The event bridge's ASGI app on a real loopback socket (uvicorn in a thread): strict
parsing, authentication, body and time limits, the delivered-push record, block routes,
and property-based fuzzing of every route's body, headers and query.

Most tests here give the bridge a recording Prefect (it can be told to be unavailable),
so that exactly which events were sent is known; the session's Prefect test API serves the
block routes and the events client. The last test proves durability against a real
`prefect server start`, stopped and started again; tests/test_triggers.py releases a real
push end to end.
"""

import asyncio
import base64
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter
from prefect_docker import DockerRegistryCredentials

from blocks.environment import ReleaseEnvironment
from deployments.event_bridge import (
    EVENT,
    BlockRoutes,
    Bridge,
    FixedRoutes,
    Limits,
    RouteRefused,
    create_app,
    server,
)
from deployments.push_delivery import (
    DeliveredPushes,
    EventRefused,
    PrefectEvents,
    PrefectUnavailable,
)
from deployments.push_events import Push, parse
from targets.registry import login, push_image, registry_auth
from tests.releases import tiny_image, wait_until
from tests.services import free_port
from tests.stack import Processes, Stack, start_bridge, start_registry, start_server

pytestmark = pytest.mark.xdist_group("bridge")  # one bridge and Prefect test API for the module

TOKEN = "bridge-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DIGEST = "sha256:" + "ab" * 32
LIMITS = Limits(head_seconds=1, body_seconds=1, emit_seconds=1)
ROUTES = ("/registry", "/artifact-registry", "/ecr")
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# What a released push may look like, checked independently of deployments/push_events.py.
VALID_PAYLOAD = {
    "repository": re.compile(r"[a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+"),
    "tag": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"),
    "digest": re.compile(r"sha256:[0-9a-f]{64}"),
}


# --- a bridge on loopback, with a recording Prefect ---------------------------------------


class FixedToken:
    async def get(self) -> bytes:
        return TOKEN.encode()


@dataclass
class RecordingEvents:
    """Takes events as the Prefect server would, or refuses like one that is down."""

    events: list[Event] = field(default_factory=list)
    unavailable: bool = False

    async def send(self, events: list[Event]) -> None:
        if self.unavailable:
            raise PrefectUnavailable("the test's Prefect is down")
        self.events.extend(events)


@dataclass
class Running:
    url: str
    port: int
    events: RecordingEvents


@contextmanager
def running_bridge(tmp_path, routes=(("*", "staging"),)) -> Iterator[Running]:
    events = RecordingEvents()
    path = tmp_path / f"{uuid.uuid4().hex}.sqlite"

    @asynccontextmanager
    async def connect():
        delivered = DeliveredPushes(path, window_seconds=3600)
        yield Bridge(FixedToken(), FixedRoutes(routes), events, delivered, LIMITS)
        delivered.close()

    port = free_port()
    uvicorn_server = server(create_app(connect), "127.0.0.1", port, LIMITS)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the bridge did not start"
        time.sleep(0.05)
    try:
        yield Running(f"http://127.0.0.1:{port}", port, events)
    finally:
        uvicorn_server.should_exit = True
        thread.join()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory) -> Iterator[Running]:
    with running_bridge(tmp_path_factory.mktemp("bridge")) as running:
        yield running


@pytest.fixture(scope="module")
def http(bridge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bridge.url, timeout=30) as client:
        yield client


def raw(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection; everything the bridge answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --- the three wire shapes ----------------------------------------------------------------


def distribution(host: str, repository: str, tag, digest, **target) -> dict:
    return {
        "events": [
            {
                "id": str(uuid.uuid4()),
                "action": "push",
                "target": {
                    "mediaType": MANIFEST,
                    "repository": repository,
                    "tag": tag,
                    "digest": digest,
                    **target,
                },
                "request": {"host": host, "method": "PUT"},
                "actor": {"name": "ci"},
            }
        ]
    }


def artifact_registry(name: str, tag, digest, action="INSERT") -> dict:
    data = {"action": action, "digest": f"{name}@{digest}", "tag": f"{name}:{tag}"}
    return pubsub(data)


def pubsub(data) -> dict:
    encoded = base64.b64encode(json.dumps(data).encode()).decode()
    return {"message": {"data": encoded, "messageId": "1"}, "subscription": "projects/p/s/r"}


def ecr(repository: str, tag, digest, account="123456789012", region="eu-west-1") -> dict:
    return {
        "source": "aws.ecr",
        "detail-type": "ECR Image Action",
        "account": account,
        "region": region,
        "detail": {
            "action-type": "PUSH",
            "result": "SUCCESS",
            "repository-name": repository,
            "image-digest": digest,
            "image-tag": tag,
        },
    }


def body_for(route: str, host: str, repository: str, tag, digest) -> dict:
    if route == "/registry":
        return distribution(host, repository, tag, digest)
    if route == "/artifact-registry":
        return artifact_registry(f"{host}/{repository}", tag, digest)
    return ecr(repository, tag, digest)


def expected_push(route: str, host: str, repository: str, tag: str, digest: str) -> dict:
    name = {
        "/registry": f"{host}/{repository}",
        "/artifact-registry": f"{host}/{repository}",
        "/ecr": f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/{repository}",
    }[route]
    source = {"/registry": "registry", "/artifact-registry": "artifact-registry"}.get(route, "ecr")
    return {"source": source, "repository": name, "tag": tag, "digest": digest}


def test_each_route_parses_its_shape_into_one_push():
    assert parse("/registry", json.dumps(distribution("r:5000", "a/b", "v1", DIGEST)).encode()) == (
        [Push("registry", "r:5000/a/b", "v1", DIGEST)],
        [],
    )
    name = "europe-docker.pkg.dev/proj/repo/backend"
    assert parse("/artifact-registry", json.dumps(artifact_registry(name, "v2", DIGEST)).encode())[
        0
    ] == [Push("artifact-registry", name, "v2", DIGEST)]
    assert parse("/ecr", json.dumps(ecr("rhesis/backend", "v2", DIGEST)).encode())[0] == [
        Push("ecr", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rhesis/backend", "v2", DIGEST)
    ]


# --- answers: known defects of the hand-written bridge, one by one -------------------------

NESTED = b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize(
    "route, body",
    [
        pytest.param("/registry", NESTED, id="nested too deeply"),
        pytest.param("/registry", distribution("h", "a/b", ["v1"], DIGEST), id="list as tag"),
        pytest.param(
            "/registry",
            distribution("h", "a/b", "v1", DIGEST, mediaType={"a": 1}),
            id="dict as type",
        ),
        pytest.param("/registry", distribution("h", "a/b", 7, DIGEST), id="integer tag"),
        pytest.param("/registry", distribution("h", "a/b", True, DIGEST), id="boolean tag"),
        pytest.param("/registry", distribution("h", "a/b", "", DIGEST), id="empty tag"),
        pytest.param("/registry", distribution("h", "", "v1", DIGEST), id="empty repository"),
        pytest.param(
            "/registry", distribution("h", "a/b", "v1", DIGEST + "\n"), id="digest + newline"
        ),
        pytest.param(
            "/registry",
            distribution("h", "a/b", "v1", "sha256:" + "AB" * 32),
            id="uppercase digest",
        ),
        pytest.param("/registry", distribution("h", "a/\ud800", "v1", DIGEST), id="lone surrogate"),
        pytest.param(
            "/registry", distribution("h", "a" * 300, "v1", DIGEST), id="oversized repository"
        ),
        pytest.param("/registry", distribution("h", "a/b", "v" * 129, DIGEST), id="oversized tag"),
        pytest.param(
            "/registry", distribution("h", "A/B", "v1", DIGEST), id="uppercase repository"
        ),
        pytest.param("/registry", distribution("h/x", "a/b", "v1", DIGEST), id="host with a path"),
        pytest.param("/artifact-registry", artifact_registry("h/a/b", "", DIGEST), id="empty tag"),
        pytest.param(
            "/artifact-registry", artifact_registry("h/a/b", "v1", DIGEST + "\n"), id="digest + NL"
        ),
        pytest.param(
            "/artifact-registry", pubsub(["not", "an", "object"]), id="data not an object"
        ),
        pytest.param(
            "/artifact-registry", pubsub({"action": "INSERT", "digest": 1, "tag": 2}), id="numbers"
        ),
        pytest.param("/ecr", ecr("rhesis/backend", 5, DIGEST), id="integer tag"),
        pytest.param("/ecr", ecr("rhesis/backend", "v1", DIGEST, account="12"), id="short account"),
        pytest.param("/ecr", ecr("x" * 300, "v1", DIGEST), id="oversized repository"),
        pytest.param("/ecr", {**ecr("r", "v", DIGEST), "detail": ["x"]}, id="detail a list"),
    ],
)
def test_malformed_pushes_are_refused_with_400_and_no_event(http, bridge, route, body):
    before = len(bridge.events.events)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()

    response = http.post(route, content=content, headers=BEARER)

    assert response.status_code == 400, response.text
    assert "malformed notification" in response.json()["error"]
    assert len(bridge.events.events) == before


def test_odd_but_harmless_input_is_answered_in_ascii(http, bridge):
    envelope = distribution("h", "a/b", "v1", DIGEST)
    envelope["events"][0]["action"] = "pu\ud800sh"

    response = http.post("/registry", content=json.dumps(envelope).encode(), headers=BEARER)

    assert response.status_code == 200
    assert response.json()["ignored"] == ["events[0]: pu\\ud800sh event"]
    assert response.content.isascii()


def test_a_malformed_request_line_gets_an_http_answer(bridge):
    for junk in (b"GARBAGE\r\n\r\n", b"POST /registry\r\n\r\n", b"\x00\xff\r\n\r\n"):
        assert raw(bridge.port, junk).startswith(b"HTTP/1.1 400 "), junk


def test_bodies_too_large_are_refused(bridge):
    head = f"POST /registry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    too_large = LIMITS.max_body_bytes + 1

    declared = raw(bridge.port, f"{head}Content-Length: {too_large}\r\n\r\n".encode())
    chunked = raw(
        bridge.port,
        f"{head}Transfer-Encoding: chunked\r\n\r\n{too_large:x}\r\n".encode()
        + b"x" * too_large
        + b"\r\n0\r\n\r\n",
    )

    assert declared.startswith(b"HTTP/1.1 413 "), declared
    assert chunked.startswith(b"HTTP/1.1 413 "), chunked[:100]


def test_a_client_sending_less_than_its_content_length_times_out(bridge):
    head = f"POST /registry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    answer = raw(bridge.port, (head + "Content-Length: 100\r\n\r\n").encode() + b'{"events"')

    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_a_client_sending_its_headers_slowly_times_out(bridge):
    answer = b""
    with socket.create_connection(("127.0.0.1", bridge.port)) as sock:
        sock.sendall(b"POST /registry HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.2)
        while True:  # one byte of a header at a time, never ending the head
            try:
                sock.sendall(b"X")
                chunk = sock.recv(1024)
            except TimeoutError:
                continue
            except OSError:  # reset: the bridge closed the connection
                break
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_idle_connections_hold_no_thread_and_are_closed(bridge):
    threads = threading.active_count()
    sockets = [socket.create_connection(("127.0.0.1", bridge.port)) for _ in range(100)]
    try:
        assert httpx.get(f"{bridge.url}/health").json() == {"status": "ok"}
        assert threading.active_count() == threads
        for sock in sockets:
            sock.settimeout(30)
            assert sock.recv(1) == b""  # closed by the bridge, idle past its head deadline
    finally:
        for sock in sockets:
            sock.close()


# --- answers while Prefect is unavailable; the delivered-push record -----------------------


def test_a_push_is_acknowledged_only_once_prefect_has_it_and_only_once(tmp_path):
    with running_bridge(tmp_path) as running, httpx.Client(base_url=running.url) as http:
        body = distribution("registry:5000", "team/app", "main-1", DIGEST)
        running.events.unavailable = True

        down = http.post("/registry", json=body, headers=BEARER)

        assert down.status_code == 503 and "deliver again later" in down.json()["error"]
        assert running.events.events == []
        running.events.unavailable = False
        assert http.post("/registry", json=body, headers=BEARER).json()["released"] == [
            {**expected_push("/registry", "registry:5000", "team/app", "main-1", DIGEST),
             "environment": "staging"}
        ]  # fmt: skip
        again = http.post("/registry", json=body, headers=BEARER).json()
        assert again["duplicates"] == [
            expected_push("/registry", "registry:5000", "team/app", "main-1", DIGEST)
        ]
        [event] = running.events.events
        assert event.id == Push("registry", "registry:5000/team/app", "main-1", DIGEST).event_id(0)


def test_the_record_survives_a_restart_and_a_push_is_new_again_after_its_window(tmp_path):
    now = [1000.0]
    push = Push("registry", "r:5000/a", "v1", DIGEST)
    path = tmp_path / "delivered.sqlite"
    first = DeliveredPushes(path, window_seconds=60, clock=lambda: now[0])
    assert first.next_generation(push) == 0
    first.delivered([(push, 0)])
    first.close()

    reopened = DeliveredPushes(path, window_seconds=60, clock=lambda: now[0])
    assert reopened.next_generation(push) is None  # a redelivery after a restart
    now[0] += 61
    assert reopened.next_generation(push) == 1  # pushed again later: a new release...
    assert push.event_id(1) != push.event_id(0)  # ...under an id Prefect has not seen
    assert reopened.next_generation(Push("registry", "r:5000/a", "v2", DIGEST)) == 0


def test_a_push_not_delivered_keeps_its_event_id_for_the_redelivery(tmp_path):
    push = Push("ecr", "1.dkr.ecr.eu-west-1.amazonaws.com/a", "v1", DIGEST)
    delivered = DeliveredPushes(tmp_path / "d.sqlite", window_seconds=60)
    # Prefect may have taken the event although the bridge never recorded it (a crash):
    # the redelivery carries the same id, which Prefect drops as a duplicate.
    assert delivered.next_generation(push) == delivered.next_generation(push) == 0
    assert push.event_id(0) == Push(*push.to_dict().values()).event_id(0)


# --- routes -------------------------------------------------------------------------------


def test_fixed_routes_first_match_wins(tmp_path):
    routes = (("*/app:v*", "production"), ("*/app:*", "staging"))
    with running_bridge(tmp_path, routes) as running, httpx.Client(base_url=running.url) as http:
        for tag, environment in (("v2", "production"), ("main-1", "staging")):
            response = http.post(
                "/registry", json=distribution("r", "app", tag, DIGEST), headers=BEARER
            )
            assert response.json()["released"][0]["environment"] == environment
        unrouted = http.post(
            "/registry", json=distribution("r", "other", "v1", DIGEST), headers=BEARER
        )
        assert unrouted.json()["ignored"] == ["r/other:v1: no environment is mapped to it"]


@pytest.fixture
def environment_blocks():
    """Save Release Environment blocks (on the session's Prefect test API) with push
    routes; removed afterwards."""
    saved = []

    def save(name: str, push_routes: list[str]) -> None:
        ReleaseEnvironment(
            environment=f"bridge-{name}",
            image_repository="127.0.0.1:5000/tests/backend",
            database_url=Secret(value="postgresql://nobody@127.0.0.1:1/nothing"),
            push_routes=push_routes,
        ).save(name, overwrite=True)
        saved.append(name)

    yield save
    with get_client(sync_client=True) as client:
        for name in saved:
            client.delete_block_document(ReleaseEnvironment.load(name)._block_document_id)


def test_block_routes_come_from_the_environments_and_refuse_ambiguity(environment_blocks):
    environment_blocks("staging", ["*/tests/backend:main-*"])
    environment_blocks("production", ["*/tests/backend:v*", "*/tests/backend:main-hotfix*"])
    environment_blocks("qa", ["*/tests/qa:*"])

    async def resolve(image: str):
        async with get_client() as client:
            return await BlockRoutes(client).environment(image)

    assert asyncio.run(resolve("r:5000/tests/backend:main-1")) == "staging"
    assert asyncio.run(resolve("r:5000/tests/backend:v2")) == "production"
    assert asyncio.run(resolve("r:5000/tests/other:v2")) is None
    with pytest.raises(RouteRefused, match="staging, production|production, staging"):
        asyncio.run(resolve("r:5000/tests/backend:main-hotfix-1"))
    assert asyncio.run(resolve("r:5000/tests/qa:v1")) == "qa"  # any block is an environment


def test_block_routes_are_read_again_when_a_push_matches_none(environment_blocks):
    async def scenario():
        async with get_client() as client:
            eager, lazy = BlockRoutes(client, miss_seconds=0), BlockRoutes(client, 3600, 3600)
            before = [await r.environment("r/tests/backend:main-2") for r in (eager, lazy)]
            await asyncio.to_thread(environment_blocks, "staging", ["r/tests/backend:main-*"])
            after = [await r.environment("r/tests/backend:main-2") for r in (eager, lazy)]
            return before, after

    before, after = asyncio.run(scenario())

    assert before == [None, None]
    assert after == ["staging", None]  # `lazy` read the blocks too recently to read again


# --- the Prefect side, for real -----------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_prefect_events_are_accepted_refused_or_unavailable():
    push = Push("registry", "r:5000/a", f"t{uuid.uuid4().hex[:6]}", DIGEST)
    good = Event(id=push.event_id(0), event="test.bridge", resource={"prefect.resource.id": "t"})
    bad = Event.model_construct(**{**good.model_dump(), "resource": {"no": "id"}})

    async def send(events, api_url=None):
        async with get_client() if api_url is None else PrefectClient(api_url) as client:
            await PrefectEvents(client, timeout_seconds=10).send(events)

    asyncio.run(send([good]))  # the test API answers 204
    with pytest.raises(EventRefused, match="refused the event \\(422\\)"):
        asyncio.run(send([bad]))
    with pytest.raises(PrefectUnavailable, match="did not answer"):
        asyncio.run(send([good], api_url=f"http://127.0.0.1:{free_port()}/api"))


# --- property-based fuzzing of every route ------------------------------------------------

hosts = st.from_regex(r"[a-z0-9]{1,12}(\.[a-z]{2,6}){0,2}(:[1-9][0-9]{1,4})?", fullmatch=True)
repositories = st.from_regex(
    r"[a-z0-9]{1,10}([._-][a-z0-9]{1,5})?(/[a-z0-9]{1,10}){0,2}", fullmatch=True
)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}", fullmatch=True)
digests = st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
not_strings = json_values.filter(lambda v: not isinstance(v, str) and v is not None)
printable = st.characters(exclude_categories=["Cs"])  # a URL cannot carry a lone surrogate
header_bytes = st.binary(max_size=40).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127).strip()
)


def post(http: httpx.Client, bridge: Running, route: str, content: bytes, **kwargs):
    before = len(bridge.events.events)
    response = http.post(route, content=content, **kwargs)
    return response, bridge.events.events[before:]


def check_events(events: list[Event]) -> None:
    for event in events:
        for key, pattern in VALID_PAYLOAD.items():
            assert isinstance(event.payload[key], str) and pattern.fullmatch(event.payload[key])
        assert len(event.payload["repository"]) <= 255


@FUZZ
@given(route=st.sampled_from(ROUTES), host=hosts, repository=repositories, tag=tags, digest=digests)
def test_fuzz_valid_pushes_are_released_once(http, bridge, route, host, repository, tag, digest):
    body = json.dumps(body_for(route, host, repository, tag, digest)).encode()

    response, events = post(http, bridge, route, body, headers=BEARER)

    assert response.status_code == 200, response.text
    report, push = response.json(), expected_push(route, host, repository, tag, digest)
    if report["duplicates"]:
        assert (report["duplicates"], events) == ([push], [])
    else:
        assert report["released"] == [{**push, "environment": "staging"}]
        assert [{k: e.payload[k] for k in push} for e in events] == [push]
    check_events(events)


def string_leaves(data, path=()):
    """Paths to every string in a JSON document (base64 Pub/Sub data opened)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from string_leaves(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from string_leaves(value, (*path, index))
    elif isinstance(data, str):
        yield path


def replaced(data, path, value):
    if not path:
        return value
    copy = data.copy()
    copy[path[0]] = replaced(data[path[0]], path[1:], value)
    return copy


@FUZZ
@given(route=st.sampled_from(ROUTES), data=st.data(), junk=not_strings)
def test_fuzz_a_wrong_type_where_a_string_belongs_is_400(http, bridge, route, data, junk):
    body = body_for(route, "r.example:5000", "team/app", "v1", DIGEST)
    if route == "/artifact-registry":  # fuzz inside the Pub/Sub message too
        inner = json.loads(base64.b64decode(body["message"]["data"]))
        leaf = data.draw(st.sampled_from([*string_leaves(inner), *string_leaves(body)]))
        if leaf in list(string_leaves(inner)):
            body = pubsub(replaced(inner, leaf, junk))
        else:
            body = replaced(body, leaf, junk)
    else:
        leaf = data.draw(st.sampled_from(list(string_leaves(body))))
        body = replaced(body, leaf, junk)
    optional = {"id", "method", "name", "messageId", "subscription"}  # fields nobody reads

    response, events = post(http, bridge, route, json.dumps(body).encode(), headers=BEARER)

    if leaf[-1] in optional:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400, (leaf, response.text)
        assert events == []
    check_events(events)


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    body=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())),
    authorization=st.one_of(st.none(), st.just(f"Bearer {TOKEN}".encode()), header_bytes),
    token=st.one_of(
        st.none(), st.just(TOKEN), st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
    ),
    extra=st.dictionaries(
        st.from_regex(r"X-[A-Za-z0-9-]{1,12}|Content-Type|Accept", fullmatch=True),
        header_bytes,
        max_size=3,
    ),
)
def test_fuzz_anything_gets_a_4xx_or_a_200_and_never_an_event_unless_valid(
    http, bridge, route, body, authorization, token, extra
):
    headers = {k: v for k, v in extra.items()}
    if authorization is not None:
        headers["Authorization"] = authorization
    params = {"token": token} if token is not None else {}
    authenticated = authorization == f"Bearer {TOKEN}".encode() or token == TOKEN

    response, events = post(http, bridge, route, body, headers=headers, params=params)

    if not authenticated:
        assert (response.status_code, events) == (401, [])
    else:
        assert response.status_code in (200, 400), response.text
        if response.status_code == 400:
            assert events == []
    check_events(events)


@settings(max_examples=60, deadline=None, database=None)
@given(
    target=st.binary(min_size=1, max_size=60).map(
        lambda b: bytes(c for c in b if c not in b" \r\n")
    ),
    value=header_bytes,
)
def test_fuzz_raw_request_lines_and_headers_always_get_an_http_answer(bridge, target, value):
    request = (
        b"POST /" + target + b" HTTP/1.1\r\nHost: x\r\nX-Fuzz: " + value + b"\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )

    answer = raw(bridge.port, request)

    assert re.match(rb"HTTP/1\.1 (200|4\d\d) ", answer), answer[:200]


# --- durability, for real: a Prefect outage and a bridge restart -------------------------
#
# A real `prefect server start` of its own on PostgreSQL (tests/stack.py), stopped for
# about 60 s, the event bridge (restarted once during the outage; routes from the
# environment blocks) and a second real docker-registry whose notifications go to the
# bridge, 20 real pushes of 20 different images meanwhile. No worker runs: each push's
# trigger creates a `release-pushed-image` run that stays Scheduled, so counting runs per
# digest is cheap.

DEPLOYMENT = "release-pushed-image"
OUTAGE_SECONDS = 60
PUSHES = 20


def runs_per_digest(stack: Stack) -> Counter:
    with stack.client() as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[DEPLOYMENT]))
        )
    return Counter(run.parameters["digest"] for run in runs)


def pushed_events(stack: Stack) -> int:
    with stack.client() as client:
        page = client.read_events(EventFilter(event=EventNameFilter(name=[EVENT])), limit=1)
    return page.total


@pytest.fixture
def outage_stack(tmp_path, registry, pg):
    processes = Processes(tmp_path)
    database = pg.create_database()
    database_url = pg.url(database).replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        stack = start_server(processes, tmp_path, database_url)
        registry2 = start_registry(processes, stack)
        with stack.settings():
            ReleaseEnvironment(
                environment=f"{stack.prefix}-staging",
                image_repository=f"{registry2}/tests/outage",
                registry_credentials=DockerRegistryCredentials(
                    username=registry.username, password=registry.password, registry_url=registry2
                ),
                database_url=Secret(value="postgresql://nobody@127.0.0.1:1/never-used"),
                push_routes=[f"{registry2}/tests/outage:*"],
            ).save("staging", overwrite=True)
        start_bridge(processes, stack, route=None)
        yield processes, stack, registry2
    finally:
        processes.stop_all()
        pg.drop_database(database)


@pytest.mark.triggers
@pytest.mark.faults
def test_pushes_during_an_outage_and_a_bridge_restart_are_each_released_once(
    outage_stack, engine, registry
):
    processes, stack, registry2 = outage_stack
    auth = registry_auth(registry.username, registry.password)
    login(engine, registry2, auth)
    references = [f"{registry2}/tests/outage:p{i}" for i in range(PUSHES + 1)]
    for reference in references:
        tiny_image(engine, reference)

    def push(reference: str) -> str:
        return push_image(engine, reference, auth, lambda _: None)[0].split("@")[1]

    try:
        processes.stop("server")
        stopped = time.monotonic()
        digests = [push(reference) for reference in references[: PUSHES // 2]]
        processes.stop("bridge")
        start_bridge(processes, stack, route=None, name="bridge-2", save_token=False)
        digests += [push(reference) for reference in references[PUSHES // 2 : PUSHES]]
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
        processes.restart("server")  # on its port and database: deployments, automations kept
        processes.wait_http("server", f"{stack.api_url}/health")

        # The registry delivers in order: once the sentinel pushed now has its run, the
        # bridge has had every notification before it (and the redeliveries).
        sentinel = push(references[PUSHES])
        wait_until(
            lambda: all(runs_per_digest(stack)[d] for d in [*digests, sentinel]),
            "a run for every push",
            timeout=300,
            interval=1,
        )

        runs = runs_per_digest(stack)
        assert len(set(digests)) == PUSHES
        assert {digest: runs[digest] for digest in digests} == dict.fromkeys(digests, 1)
        assert sum(runs.values()) == PUSHES + 1
        # One event per push, none sent twice (the server stores events in batches).
        assert wait_until(lambda: pushed_events(stack) >= PUSHES + 1, "events", 300, 1) is True
        assert pushed_events(stack) == PUSHES + 1
        bridge_logs = processes.log("bridge") + processes.log("bridge-2")
        assert bridge_logs.count("-> staging (event ") == PUSHES + 1
        assert "answering 503" in bridge_logs
        assert stack.token not in bridge_logs
    finally:
        for reference in references:
            engine.images.remove(reference, force=True)
