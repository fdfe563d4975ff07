"""The event bridge: registry push notifications in, Prefect events out, each push once.

    python -m deployments.event_bridge --port 8081 [--route PATTERN=ENVIRONMENT ...]
                                       [--state-dir DIR] [--token-block NAME]

One route per registry (see deployments/push_events.py): POST /registry (Docker registry
notifications), /artifact-registry (Pub/Sub push of the `gcr` topic), /ecr (EventBridge
"ECR Image Action"); GET /health. Every POST must carry the shared token from a Prefect
Secret block (default `event-bridge-token`), as `Authorization: Bearer TOKEN` or, where the
sender can only set a URL (Pub/Sub push), `?token=TOKEN`.

Answers: 200 once every push in the notification is in Prefect (or was already, or is
ignored: blob, pull, delete and untagged events, images no route maps); 401 without the
token; 400 for a malformed body, 413 for one over 1 MiB, 408 for one that does not arrive
in time; 409 for a push the routes cannot place (two environments claim it, or one the
deployment does not accept); 422 for an event Prefect refuses; 503 while the Prefect server
is unavailable, so the registry delivers again later. Each new push mapped to an
environment becomes a `registry.image.pushed` event, which the `release-pushed-image`
deployment's trigger turns into a release of exactly that digest.

Routes: the `--route` options (first match wins), or else the `push_routes` of the Release
Environment blocks on the server, re-read every minute and, at most every 5 s, when a push
matches none.
"""

import argparse
import asyncio
import hmac
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import h11
import httpx
import uvicorn
from cachetools import TTLCache
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient, get_client
from prefect.events import Event
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    PREFECT_HOME,
    temporary_settings,
)
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from deployments.environments import Routes, matching_environments, parse_route
from deployments.environments import route as first_route
from deployments.push_delivery import (
    DeliveredPushes,
    EventRefused,
    PrefectEvents,
    PrefectUnavailable,
)
from deployments.push_events import PARSERS, MalformedNotification, Push, parse

EVENT = "registry.image.pushed"
log = logging.getLogger("event_bridge")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    head_seconds: float = 10.0  # for a request's line and headers to arrive
    body_seconds: float = 10.0  # for its body to arrive
    emit_seconds: float = 4.0  # for Prefect to accept the events (registries wait 5 s)
    max_connections: int = 200  # beyond: 503 at once


class RouteRefused(Exception):
    """The routes cannot place a push (ambiguous, or an environment no run accepts)."""


class Router(Protocol):
    async def environment(self, image: str) -> str | None: ...


class Sender(Protocol):
    async def send(self, events: list[Event]) -> None: ...


class TokenSource(Protocol):
    async def get(self) -> bytes: ...


class FixedRoutes:
    """The `--route` options: the first matching pattern wins."""

    def __init__(self, routes: Routes):
        self.routes = routes

    async def environment(self, image: str) -> str | None:
        return first_route(image, self.routes)


class BlockRoutes:
    """The `push_routes` of every Release Environment block (the block's name is the
    environment), read from the server at most every `refresh_seconds`, and again when a
    push matches none, at most every `miss_seconds`. Block documents are read without
    their secrets: the bridge never holds a database URL or registry password."""

    def __init__(
        self, client: PrefectClient, refresh_seconds: float = 60.0, miss_seconds: float = 5.0
    ):
        self._client = client
        self._routes: TTLCache[str, Routes] = TTLCache(maxsize=1, ttl=refresh_seconds)
        self._recent: TTLCache[str, bool] = TTLCache(maxsize=1, ttl=miss_seconds)

    async def environment(self, image: str) -> str | None:
        routes = self._routes.get("routes")
        if routes is None:
            routes = await self._load()
        matches = matching_environments(image, routes)
        if not matches and "loaded" not in self._recent:
            matches = matching_environments(image, await self._load())
        if len(matches) > 1:
            raise RouteRefused(
                f"{image} matches the push_routes of the environments {', '.join(matches)}: "
                "make their patterns exclusive (Release Environment blocks, push_routes)"
            )
        return matches[0] if matches else None

    async def _load(self) -> Routes:
        try:
            docs = await self._client.read_block_documents_by_type(
                "release-environment", include_secrets=False
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise PrefectUnavailable(f"cannot read the push routes ({exc})") from None
            docs = []  # the block type is not registered yet: no environment, no route
        except (httpx.HTTPError, OSError) as exc:
            raise PrefectUnavailable(
                f"cannot read the push routes ({type(exc).__name__})"
            ) from None
        routes: list[tuple[str, str]] = []
        for doc in sorted(docs, key=lambda d: d.name or ""):
            patterns = doc.data.get("push_routes") or []
            if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                log.error(f"Release Environment {doc.name!r}: push_routes is not a list of text")
                continue
            routes.extend((pattern, doc.name) for pattern in patterns if doc.name)
        self._routes["routes"] = loaded = tuple(routes)
        self._recent["loaded"] = True
        return loaded


class SecretToken:
    """The token from the Secret block `name`, read once, when the server first answers."""

    def __init__(self, client: PrefectClient, name: str, value: str | None = None):
        self._client, self.name = client, name
        self._value = value.encode() if value is not None else None

    async def get(self) -> bytes:
        if self._value is None:
            try:
                secret = await Secret.aload(self.name, client=self._client)
            except ValueError:
                raise PrefectUnavailable(
                    f"no Secret block {self.name!r} (create it with the token the registries send)"
                ) from None
            except (httpx.HTTPError, OSError) as exc:
                raise PrefectUnavailable(f"cannot read the token ({type(exc).__name__})") from None
            self._value = secret.get().encode()
        return self._value


@dataclass
class Bridge:
    token: TokenSource
    routes: Router
    events: Sender
    delivered: DeliveredPushes
    limits: Limits

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()  # one notification at a time: look up, send, record

    async def deliver(self, pushes: list[Push], received_at: datetime) -> dict[str, list]:
        """Send the pushes Prefect has not got yet; the report of what was done."""
        report: dict[str, list] = {"released": [], "duplicates": [], "ignored": []}
        routed = []
        for push in dict.fromkeys(pushes):  # a push listed twice counts once
            environment = await self.routes.environment(push.image)
            if environment is None:
                report["ignored"].append(f"{push.image}: no environment is mapped to it")
            else:
                routed.append((push, environment))
        async with self._lock:
            fresh = []
            for push, environment in routed:
                generation = self.delivered.next_generation(push)
                if generation is None:
                    report["duplicates"].append(push.to_dict())
                else:
                    fresh.append((push, environment, generation))
            if fresh:
                await self.events.send(
                    [_event(push, env, gen, received_at) for push, env, gen in fresh]
                )
                self.delivered.delivered((push, generation) for push, _, generation in fresh)
        for push, environment, generation in fresh:
            log.info(
                f"{push.source}: {push.image}@{push.digest} -> {environment} "
                f"(event {push.event_id(generation)})"
            )
            report["released"].append({**push.to_dict(), "environment": environment})
        return report


def _event(push: Push, environment: str, generation: int, received_at: datetime) -> Event:
    return Event(
        id=push.event_id(generation),
        event=EVENT,
        resource={
            "prefect.resource.id": f"registry.image.{push.repository}",
            "prefect.resource.name": push.image,
        },
        payload={
            **push.to_dict(),
            "environment": environment,
            "received_at": received_at.isoformat(),
        },
    )


class Reply(JSONResponse):
    """JSON in ASCII: whatever a sender put in a name, the answer can be encoded."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True).encode()


def authenticated(request: Request, token: bytes) -> bool:
    offered = request.query_params.getlist("token")
    authorization = request.headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        offered.append(authorization.removeprefix("Bearer "))
    return any(hmac.compare_digest(o.encode(errors="replace"), token) for o in offered)


class BodyRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_body(request: Request, limits: Limits) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > limits.max_body_bytes:  # h11 checked digits
        raise BodyRefused(413, f"the body is larger than {limits.max_body_bytes} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(limits.body_seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limits.max_body_bytes:
                    raise BodyRefused(413, f"the body is larger than {limits.max_body_bytes} bytes")
    except TimeoutError:
        raise BodyRefused(408, f"the body did not arrive within {limits.body_seconds} s") from None
    return bytes(body)


def create_app(connect: Callable[[], AbstractAsyncContextManager[Bridge]]) -> FastAPI:
    """The bridge's ASGI app; `connect` opens its Bridge for the app's lifetime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with connect() as bridge:
            app.state.bridge = bridge
            yield

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> Reply:
        return Reply({"status": "ok"})

    async def notification(request: Request) -> Reply:
        status, body = await handle(request.app.state.bridge, request)
        # The path only: a query string may carry the token.
        log.info(f"POST {request.url.path} -> {status}")
        return Reply(body, status_code=status)

    for path in PARSERS:
        app.add_api_route(path, notification, methods=["POST"])
    return app


async def handle(bridge: Bridge, request: Request) -> tuple[int, dict]:
    received_at = datetime.now(UTC)
    try:
        if not authenticated(request, await bridge.token.get()):
            return 401, {"error": "missing or wrong token"}
        pushes, ignored = parse(request.url.path, await read_body(request, bridge.limits))
        report = await bridge.deliver(pushes, received_at)
    except BodyRefused as exc:
        return exc.status, {"error": str(exc)}
    except MalformedNotification as exc:
        return 400, {"error": f"malformed notification: {exc}"}
    except RouteRefused as exc:
        log.error(f"refused a push: {exc}")
        return 409, {"error": str(exc)}
    except EventRefused as exc:
        log.error(f"refused a push: {exc}")
        return 422, {"error": str(exc)}
    except PrefectUnavailable as exc:
        log.warning(f"answering 503: {exc}")
        return 503, {"error": f"{exc}; deliver again later"}
    except ClientDisconnect:
        return 400, {"error": "the client went away"}
    report["ignored"] = ignored + report["ignored"]
    return 200, report


def head_deadline(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, with a deadline for the client: `seconds` after a connection
    opens, or after its last response, the connection is closed unless a request is being
    handled (408 first if part of a request's line and headers came). The rest of a body
    sent after its answer (413, 408) is read and dropped until then."""

    class HeadDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _expire(self) -> None:
            handling = self.cycle is not None and not self.cycle.response_complete
            if handling or self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"
                    b"connection: close\r\n\r\n"
                )
            self.transport.close()

    return HeadDeadline


def server(app: FastAPI, host: str, port: int, limits: Limits) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            http=head_deadline(limits.head_seconds),
            limit_concurrency=limits.max_connections,
            access_log=False,  # it would log the query string, which may carry the token
            log_config=None,
            timeout_graceful_shutdown=5,
        )
    )


def prefect_bridge(
    token_block: str,
    token: str | None,
    routes: Routes | None,
    state_dir: Path,
    window: float,
    limits: Limits,
) -> Callable[[], AbstractAsyncContextManager[Bridge]]:
    """Opens the Bridge of `main`: Prefect's client for the events, the token and the
    block routes; the record of delivered pushes in `state_dir`."""

    @asynccontextmanager
    async def connect() -> AsyncIterator[Bridge]:
        delivered = DeliveredPushes(state_dir / "delivered.sqlite", window)
        try:
            async with get_client() as client:
                yield Bridge(
                    token=SecretToken(client, token_block, token),
                    routes=FixedRoutes(routes) if routes else BlockRoutes(client),
                    events=PrefectEvents(client, limits.emit_seconds),
                    delivered=delivered,
                    limits=limits,
                )
        finally:
            delivered.close()

    return connect


def initial_token(block: str) -> str | None:
    """The token, or None when the server does not answer yet; exits when it has no
    such block."""
    try:
        return Secret.load(block).get()
    except ValueError:
        sys.exit(
            f"no Secret block {block!r}: create it first, e.g. "
            f"`Secret(value=...).save({block!r})`, with the token the registries send"
        )
    except (httpx.HTTPError, OSError) as exc:
        log.warning(f"the Prefect server does not answer ({type(exc).__name__}): answering 503")
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.event_bridge")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--token-block", default="event-bridge-token", help="Secret block with the token"
    )
    parser.add_argument(
        "--route",
        action="append",
        type=parse_route,
        help="PATTERN=ENVIRONMENT, first match wins (default: the push_routes of the "
        "Release Environment blocks)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(PREFECT_HOME.value()) / "event-bridge",
        help="where the record of delivered pushes is kept (default: PREFECT_HOME/event-bridge)",
    )
    parser.add_argument(
        "--dedupe-seconds",
        type=float,
        default=3600,
        help="a push of the same tag and digest within this time is a duplicate",
    )
    args = parser.parse_args(argv)
    # Prefect configures the root logger when it is imported (at WARNING): this process's
    # own lines are INFO.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    if not PREFECT_API_URL.value():
        sys.exit(
            "PREFECT_API_URL is not set: point it at the Prefect server the deployments are "
            "on, e.g. http://127.0.0.1:4200/api"
        )
    # Fail fast and let the registry deliver again, rather than retry inside a request.
    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
        token = initial_token(args.token_block)
        routes = tuple(args.route) if args.route else None
        limits = Limits()
        connect = prefect_bridge(
            args.token_block, token, routes, args.state_dir, args.dedupe_seconds, limits
        )
        log.info(
            f"listening on http://{args.host}:{args.port}, routes: "
            + (", ".join(f"{p} -> {e}" for p, e in routes) if routes else "from the blocks")
        )
        server(create_app(connect), args.host, args.port, limits).run()


if __name__ == "__main__":
    main()
