"""The event bridge: registry push notifications in, Prefect events out.

    python -m deployments.event_bridge --port 8081 [--route PATTERN=ENVIRONMENT ...]

One route per registry (see deployments/push_events.py): POST /registry (Docker registry
notifications), /artifact-registry (Pub/Sub push of the `gcr` topic), /ecr (EventBridge
"ECR Image Action"); GET /health. Every POST must carry the shared token from a Prefect
Secret block (default `event-bridge-token`), as `Authorization: Bearer TOKEN` or, where the
sender can only set a URL (Pub/Sub push), `?token=TOKEN`. Unauthenticated -> 401, malformed
-> 400. Blob, pull and delete events are ignored; a redelivered push (same source,
repository, tag and digest within the dedupe window) is acknowledged and not emitted again.
Each new push mapped to an environment (deployments/environments.py) becomes a
`registry.image.pushed` event, which the `release-pushed-image` deployment's trigger turns
into a release of exactly that digest.
"""

import argparse
import hmac
import json
import logging
import signal
import sys
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prefect.blocks.system import Secret
from prefect.events import emit_event
from prefect.events.worker import EventsWorker

from deployments.environments import PUSH_ROUTES, parse_route, route
from deployments.push_events import PARSERS, MalformedNotification, Push

EVENT = "registry.image.pushed"
MAX_BODY_BYTES = 1 << 20
log = logging.getLogger("event_bridge")


class RecentPushes:
    """Pushes seen within `window_seconds`, at most `capacity` of them (oldest dropped)."""

    def __init__(self, window_seconds: float, capacity: int):
        self.window_seconds, self.capacity = window_seconds, capacity
        self._seen: OrderedDict[Push, float] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, push: Push) -> bool:
        """True the first time `push` is seen within the window (and remember it)."""
        now = time.monotonic()
        with self._lock:
            while self._seen and (
                len(self._seen) >= self.capacity
                or next(iter(self._seen.values())) < now - self.window_seconds
            ):
                self._seen.popitem(last=False)
            if push in self._seen:
                return False
            self._seen[push] = now
            return True

    def forget(self, push: Push) -> None:
        with self._lock:
            self._seen.pop(push, None)


class EventBridge:
    def __init__(self, token: str, routes: tuple[tuple[str, str], ...], recent: RecentPushes):
        self._token = token.encode()
        self.routes, self.recent = routes, recent

    def authenticated(self, authorization: str | None, query: str) -> bool:
        offered = parse_qs(query).get("token", [])
        if authorization and authorization.startswith("Bearer "):
            offered.append(authorization.removeprefix("Bearer "))
        return any(hmac.compare_digest(o.encode(), self._token) for o in offered)

    def handle(self, path: str, body: bytes) -> tuple[HTTPStatus, dict]:
        """A notification on `path` -> (status, report of what was done with it)."""
        received_at = datetime.now(UTC)
        try:
            pushes, ignored = PARSERS[path](json.loads(body))
        except (MalformedNotification, ValueError) as exc:  # JSONDecodeError is a ValueError
            return HTTPStatus.BAD_REQUEST, {"error": f"malformed notification: {exc}"}
        report: dict[str, list] = {"released": [], "duplicates": [], "ignored": ignored}
        for push in pushes:
            environment = route(push.image, self.routes)
            if environment is None:
                report["ignored"].append(f"{push.image}: no environment is mapped to it")
            elif not self.recent.claim(push):
                report["duplicates"].append(push.to_dict())
            elif self._emit(push, environment, received_at):
                report["released"].append({**push.to_dict(), "environment": environment})
            else:
                self.recent.forget(push)  # not emitted: let the sender's redelivery through
                return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "could not emit the event"}
        return HTTPStatus.OK, report

    def _emit(self, push: Push, environment: str, received_at: datetime) -> bool:
        event = emit_event(
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
        elapsed_ms = (datetime.now(UTC) - received_at).total_seconds() * 1000
        if event is None:
            log.error(f"could not emit {EVENT} for {push.image}@{push.digest}")
            return False
        log.info(
            f"{push.source}: {push.image}@{push.digest} -> {environment} "
            f"(event {event.id}, {elapsed_ms:.0f} ms after receipt)"
        )
        return True


def handler_for(bridge: EventBridge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if urlsplit(self.path).path == "/health":
                self._reply(HTTPStatus.OK, {"status": "ok"})
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": "unknown path"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if url.path not in PARSERS:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"routes: {', '.join(PARSERS)}"})
                return
            if not bridge.authenticated(self.headers.get("Authorization"), url.query):
                self._reply(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong token"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
                return
            if not 0 <= length <= MAX_BODY_BYTES:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                return
            self._reply(*bridge.handle(url.path, self.rfile.read(length)))

        def _reply(self, status: HTTPStatus, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            # The path only: a query string may carry the token.
            log.info(f"{self.command} {urlsplit(self.path).path} -> {code}")

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
            log.warning(format % args)

    return Handler


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
        help="PATTERN=ENVIRONMENT, first match wins (default: deployments/environments.py)",
    )
    parser.add_argument("--dedupe-seconds", type=float, default=3600)
    parser.add_argument("--dedupe-capacity", type=int, default=10_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        token = Secret.load(args.token_block).get()
    except ValueError:
        sys.exit(
            f"no Secret block {args.token_block!r}: create it first, e.g. "
            f"`Secret(value=...).save({args.token_block!r})`, with the token the registries send"
        )
    routes = tuple(args.route or PUSH_ROUTES)
    bridge = EventBridge(token, routes, RecentPushes(args.dedupe_seconds, args.dedupe_capacity))
    server = ThreadingHTTPServer((args.host, args.port), handler_for(bridge))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info(
        f"listening on http://{args.host}:{server.server_port} "
        f"(routes: {', '.join(f'{p} -> {e}' for p, e in routes)})"
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        EventsWorker.drain_all()


if __name__ == "__main__":
    main()
