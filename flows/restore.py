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

from blocks.application import ROLES
from blocks.environment import ReleaseEnvironment, push_credentials
from flows.prepare import resolve_images
from flows.rollout import roll_out
from flows.saga import Saga
from ledger.record import GOOD, Compensation, ReleaseRecord, Snapshot
from ledger.store import Ledger
from targets.errors import ConfigurationError
from tasks.check_migrations import check_downgrade
from tasks.migrate import downgrade
from tasks.snapshot import take_snapshot
from tasks.verify import verify_api


def restore(env: ReleaseEnvironment, to: str) -> list[str]:
    """Put back the release `to` (a ledger id, or "previous"); return what was restored."""
    with Saga.begin(env, "restore", f"ledger: {to}", schema_undo="upgrade", planned=10) as saga:
        snapshot = saga.step("snapshot", take_snapshot, env, saga.target)
        saga.record.took_snapshot(snapshot)
        with Ledger(env.database_url_value()) as ledger:
            records = ledger.history(env.environment, limit=200)
        chosen = choose(records, to, snapshot)
        wanted = chosen.expected
        wanted_images = chosen.images or dict.fromkeys(ROLES, wanted.image)
        resolved = resolve_images(saga, wanted_images, push_credentials(env))
        images = {role: pinned for role, (pinned, _) in resolved.items()}
        saga.record.rolls_out(images, chosen.version, wanted.workers)
        current = snapshot.schema_revision
        same_app = snapshot.state.api.image == images["api"]
        same_app &= snapshot.state.workers.replicas == wanted.workers
        if same_app and current == wanted.schema:
            message = f"release {chosen.short_id} ({chosen.version}) already runs"
            return [saga.finish("no-op", message, current)["message"]]

        # The schema goes down with the migrate image that runs now: it knows the newer
        # revisions. If the restore fails, the same image upgrades it back.
        running = running_migrate_image(records, snapshot)
        saga.record.schema_image = running
        if current != wanted.schema:
            if running is None:
                raise ConfigurationError(
                    f"schema is at {current or 'base'} but no API runs whose image could "
                    f"downgrade it to {wanted.schema or 'base'}: release instead"
                )
            saga.step(
                "check-downgrade",
                check_downgrade,
                env,
                saga.target,
                running,
                current=current,
                revision=wanted.schema,
            )
        roll_out(saga, images, chosen.version, wanted.workers)
        if current != wanted.schema:
            saga.step(
                "downgrade-schema",
                downgrade,
                env,
                saga.target,
                running,
                wanted.schema,
                compensation=Compensation.SCHEMA,
            )
            saga.step(
                "verify-api",
                verify_api,
                env,
                saga.target,
                saga.target.service_url(),
                version=chosen.version,
                image=images["api"],
            )
        message = (
            f"restored release {chosen.short_id} ({chosen.version}) to {env.environment}: API "
            f"healthy, {wanted.workers} worker(s), schema {current or 'base'} -> "
            f"{wanted.schema or 'base'}"
        )
        return [saga.finish("restored", message, wanted.schema)["message"]]


def running_migrate_image(records: list[ReleaseRecord], snapshot: Snapshot) -> str | None:
    """The migrate image of what runs: the one the ledger says rolled out the running API,
    or the API's own image (the roles share one unless the spec builds them apart)."""
    api = snapshot.state.api.image
    for record in records:
        if record.image == api and record.images.get("migrate"):
            return record.images["migrate"]
    return api


def choose(records: list[ReleaseRecord], to: str, snapshot: Snapshot) -> ReleaseRecord:
    """The release to put back: the newest good one that differs from what runs now, or
    the one whose id starts with `to`."""
    if to != "previous":
        matches = [r for r in records if r.id.startswith(to)]
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
    for record in records:
        good = record.outcome in GOOD and record.expected is not None
        if good and (record.expected.image, record.expected.schema) != running:
            return record
    raise ConfigurationError(
        "no earlier good release in the ledger to put back (see the `status` flow's ledger table)"
    )
