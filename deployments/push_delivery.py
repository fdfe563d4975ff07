"""Each push to Prefect exactly once: a durable record of the pushes Prefect accepted, and
an events sender that returns only once the server has accepted the events.

Why both: the registry redelivers a notification until the bridge answers 2xx, so the
bridge answers 2xx only after Prefect accepted the event, and remembers (in SQLite, across
restarts) which pushes it has delivered. A crash between Prefect's acceptance and that
record is covered by the event id: it is derived from the push (push_events.Push.event_id),
so the redelivery sends the same id again, and the Prefect server drops an event id it has
seen in the last 30 minutes (prefect/server/events: the messaging publisher's and the
triggers' seen-id caches, both in memory: a server restart forgets them).
"""

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.events import Event

from deployments.push_events import Push

# Rows are kept at least this long: longer than the Prefect server remembers an event id,
# so an id is never reused while the server could still drop it as a duplicate.
KEEP_SECONDS = 3600


class PrefectUnavailable(Exception):
    """The Prefect server did not accept the events (down, timing out, 5xx): try later."""


class EventRefused(Exception):
    """The Prefect server refused the events as invalid: sending them again cannot help."""


class DeliveredPushes:
    """Pushes whose event Prefect accepted, in a SQLite file.

    A push delivered less than `window_seconds` ago is a duplicate (a redelivery, or the
    same tag and digest pushed again). After that it is new again: its next release gets
    the next generation's event id, which the Prefect server has never seen.
    """

    def __init__(self, path: Path, window_seconds: float, clock: Callable[[], float] = time.time):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.window_seconds, self._clock = window_seconds, clock
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute(
            "create table if not exists delivered ("
            " push text primary key, generation integer not null, delivered_at real not null)"
        )

    def next_generation(self, push: Push) -> int | None:
        """The generation the push's next event is (0 the first time), or None when it
        was delivered within the window."""
        row = self._db.execute(
            "select generation, delivered_at from delivered where push = ?", (push.key,)
        ).fetchone()
        if row is None:
            return 0
        generation, delivered_at = row
        if self._clock() - delivered_at < self.window_seconds:
            return None
        return generation + 1

    def delivered(self, pushes: Iterable[tuple[Push, int]]) -> None:
        """Record that Prefect accepted the events of these (push, generation)s."""
        now = self._clock()
        with self._db:
            self._db.execute("begin immediate")
            self._db.executemany(
                "insert or replace into delivered values (?, ?, ?)",
                [(push.key, generation, now) for push, generation in pushes],
            )
            self._db.execute(
                "delete from delivered where delivered_at < ?",
                (now - max(self.window_seconds, KEEP_SECONDS),),
            )

    def close(self) -> None:
        self._db.close()


class PrefectEvents:
    """Sends events with `POST /api/events`, which answers 204 once the server has taken
    them (unlike `emit_event`, which only queues them in a background worker)."""

    def __init__(self, client: PrefectClient, timeout_seconds: float):
        self._client, self.timeout_seconds = client, timeout_seconds

    async def send(self, events: list[Event]) -> None:
        body = [event.model_dump(mode="json") for event in events]
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self._client.request("POST", "/events", json=body)
        except httpx.HTTPStatusError as exc:  # the client raises for every error status
            status = exc.response.status_code
            if status in (400, 413, 422):
                raise EventRefused(
                    f"the Prefect server refused the event ({status}): {exc.response.text[:300]}"
                ) from None
            raise PrefectUnavailable(f"the Prefect server answered {status}") from None
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            raise PrefectUnavailable(
                f"the Prefect server did not answer ({type(exc).__name__})"
            ) from None
