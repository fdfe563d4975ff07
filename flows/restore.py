"""Restore an earlier release from the ledger ("put back the one from Tuesday"):

    snapshot what runs                     (the rollback point of the restore itself)
    pick the release                       (the previous good one, or the id asked for)
    check the way back                     (its image is still in the registry; the running
                                            image can downgrade the schema to its revision)
    deploy its API + scale its workers     (old code runs on the newer, expanded schema)
    verify, promote
    downgrade the schema to its revision   (with the RUNNING image: it knows the newer
                                            revisions), verify again

It is a saga like a release: if a step fails, the compensations put back what ran before
the restore (the schema with an upgrade), and the ledger records the restore either way.
"""

from blocks.environment import ReleaseEnvironment, connect_target, push_credentials
from flows.history import begin, succeed
from flows.record import SCHEMA, ReleaseRecord
from flows.rollout import roll_out
from flows.summary import ReleaseSummary, Timeline
from flows.undo import fail, undo
from ledger.store import Entry, Expected, Ledger
from targets.errors import ConfigurationError
from tasks.check_migrations import check_downgrade
from tasks.migrate import downgrade
from tasks.push import resolve
from tasks.snapshot import Snapshot, take_snapshot
from tasks.verify import verify_api

GOOD = ("released", "restored")


def restore(env: ReleaseEnvironment, to: str) -> list[str]:
    """Put back the release `to` (a ledger id, or "previous"); return what was restored."""
    record, entry = begin(env, "restore", f"ledger: {to}", schema_undo="upgrade")
    timeline = Timeline()
    try:
        summary, expected = _restore(env, record, entry, timeline, to)
    except Exception as exc:
        what = f"restore of {to} to {env.environment}"
        fail(env, record, entry, timeline, exc, what, lambda: undo(env, record))
    succeed(env, record, entry, summary, expected)
    return [summary.message]


def choose(entries: list[Entry], to: str, snapshot: Snapshot) -> Entry:
    """The release to put back: the newest good one that differs from what runs now, or
    the one whose id starts with `to`."""
    if to != "previous":
        matches = [e for e in entries if e.id.startswith(to)]
        if len(matches) != 1:
            raise ConfigurationError(
                f"{len(matches) or 'no'} release(s) with id {to!r} in the ledger: give a "
                "longer id from the ledger table (the `status` flow shows it), or 'previous'"
            )
        chosen = matches[0]
        if chosen.outcome not in GOOD or chosen.expected is None:
            raise ConfigurationError(
                f"release {chosen.short_id} ended {chosen.outcome!r}, so there is no state of "
                f"it to put back: pick one whose outcome is {' or '.join(GOOD)}"
            )
        return chosen
    running = (snapshot.state.api.image, snapshot.schema_revision)
    for entry in entries:
        good = entry.outcome in GOOD and entry.expected is not None
        if good and (entry.expected.image, entry.expected.schema) != running:
            return entry
    raise ConfigurationError(
        "no earlier good release in the ledger to put back (see the `status` flow's ledger "
        "table): nothing was changed"
    )


def _restore(
    env: ReleaseEnvironment, record: ReleaseRecord, entry: Entry, timeline: Timeline, to: str
) -> tuple[ReleaseSummary, Expected]:
    snapshot = timeline.run("snapshot", take_snapshot, env)
    ledger = Ledger(env.database_url_value())
    try:
        chosen = choose(ledger.history(env.environment, limit=200), to, snapshot)
    finally:
        ledger.dispose()
    wanted = chosen.expected
    pinned, _ = timeline.run(
        "resolve-image", resolve, wanted.image, push_credentials(env), env.docker_host
    )
    version = chosen.version
    record.image, record.version, record.snapshot = pinned, version, snapshot
    before, current = snapshot.state, snapshot.schema_revision
    entry.previous_image = before.api.image
    entry.workers_before, entry.workers_after = before.workers.replicas, wanted.workers

    def summary(outcome: str, message: str) -> ReleaseSummary:
        return ReleaseSummary(
            env.environment,
            outcome,
            pinned,
            version,
            before.api.version,
            current,
            wanted.schema,
            message,
            timeline.steps,
        )

    expected = Expected(pinned, wanted.workers, wanted.schema)
    same_app = before.api.image == pinned and before.workers.replicas == wanted.workers
    if same_app and current == wanted.schema:
        return summary("no-op", f"release {chosen.short_id} ({version}) already runs"), expected
    if current != wanted.schema:
        if before.api.image is None:
            raise ConfigurationError(
                f"schema is at {current or 'base'} but no API runs whose image could "
                f"downgrade it to {wanted.schema or 'base'}: release instead"
            )
        timeline.run(
            "check-downgrade", check_downgrade, env, before.api.image, current, wanted.schema
        )
    roll_out(env, record, timeline, pinned, version, wanted.workers)
    if current != wanted.schema:
        record.register(SCHEMA)
        timeline.run("downgrade-schema", downgrade, env, before.api.image, wanted.schema)
        timeline.run("verify-api", verify_api, env, connect_target(env).service_url(), version)
    message = (
        f"restored release {chosen.short_id} ({version}) to {env.environment}: API healthy, "
        f"{wanted.workers} worker(s), schema {current or 'base'} -> {wanted.schema or 'base'}"
    )
    return summary("restored", message), expected
