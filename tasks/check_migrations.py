"""check-migrations: before anything changes, make sure the pending revisions are safe.

1. Render the pending revisions' SQL offline in the NEW image and lint it
   (targets.migration_lint): an operation that breaks the running version is refused.
2. Render their downgrades offline: a revision whose downgrade raises or changes nothing is
   irreversible and refused (the rollback could not undo it).
3. Rehearse on a scratch database on the same server: bring it to the current revision
   (replaying the new image's own revisions: nothing needed on the runner, works for every
   target), then upgrade head -> downgrade current -> upgrade head, and drop it. The
   one-off gets the scratch URL under every name the application reads its database from
   (`database_url_variables`, `database_url_parts`) and first proves, through the app's
   own Alembic configuration, that it talks to the scratch database; if it cannot, the
   rehearsal refuses before it changes anything, naming the variable to fix.

`allow_breaking` lists the revisions whose findings the caller accepts.
"""

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError

from blocks.environment import ReleaseEnvironment
from targets.base import Target
from targets.database import (
    classify_connection_error,
    read_revision,
    schema_fingerprint,
    sqlalchemy_url,
)
from targets.errors import ConfigurationError, StepFailed
from targets.migration_lint import irreversible, lint, split_revisions
from tasks.migrate import migration_error, migration_pg_options, render_offline_sql
from tasks.retry import transient_retries


class MigrationRefused(StepFailed):
    """A pending revision would break the running version or could not be rolled back."""


@dataclass(frozen=True)
class MigrationCheck:
    pending: list[str]
    accepted: list[str] = field(default_factory=list)  # refusals waived by allow_breaking
    rehearsal_seconds: float | None = None
    irreversible: list[str] = field(default_factory=list)  # accepted one-way revisions


@task(name="check-migrations", cache_policy=NO_CACHE, **transient_retries(2))
def check_migrations(
    env: ReleaseEnvironment,
    target: Target,
    image: str,
    *,
    current: str | None,
    allow_breaking: list[str] | None = None,
) -> MigrationCheck:
    """Refuse breaking or irreversible pending revisions, then rehearse the round trip."""
    logger = get_run_logger()
    revisions = f"{current}:head" if current else "head"
    upgrade = render_offline_sql(env, target, image, verb="upgrade", revisions=revisions)
    if upgrade.error and current and "Can't locate revision" in upgrade.error:
        raise MigrationRefused(
            f"the database is at revision {current}, which {image} does not know: the image is "
            "older than the schema. Release a newer image, or first downgrade the schema with "
            f"the image that brought {current} (Alembic: {upgrade.error})"
        )
    if upgrade.error:
        raise StepFailed(f"cannot render the pending migrations of {image}: {upgrade.error}")
    if not upgrade.readable:
        logger.warning(
            f"migration check SKIPPED: the {env.target} target returns no output from one-off "
            "runs, so the pending revisions cannot be read, linted or rehearsed here"
        )
        return MigrationCheck([])
    revisions = split_revisions(upgrade.sql)
    pending = [r.revision for r in revisions]
    allowed = set(allow_breaking or [])
    if unknown := sorted(allowed - set(pending)):
        raise ConfigurationError(
            f"allow_breaking names {', '.join(unknown)}, not pending from "
            f"{current or 'base'} (pending: {', '.join(pending) or 'none'}): fix the list"
        )
    if not pending:
        logger.info(f"schema at {current or 'base'} is already at head: nothing to check")
        return MigrationCheck(pending)
    logger.info(f"pending revisions: {', '.join(pending)}")
    problems = [(f.revision, str(f)) for f in lint(revisions)]
    one_way = _irreversible(env, target, image, start="head", end=current, pending=pending)
    problems += [(revision, reason) for revision, reason in one_way.items()]
    refused = [reason for revision, reason in problems if revision not in allowed]
    if refused:
        breaking = sorted({revision for revision, _ in problems} - allowed)
        raise MigrationRefused(
            f"pending revisions refused: {'; '.join(refused)}. If this is intended, "
            f"allow it explicitly: allow_breaking={breaking}"
        )
    accepted = [reason for _, reason in problems]
    for reason in accepted:
        logger.warning(f"accepted by allow_breaking: {reason}")
    if not env.migration_rehearsal:
        logger.info("rehearsal is off for this environment (migration_rehearsal=False)")
        return MigrationCheck(pending, accepted, irreversible=sorted(one_way))
    round_trip = not one_way  # an accepted irreversible revision cannot be rehearsed back
    seconds = rehearse(env, target, image, current=current, head=pending[-1], round_trip=round_trip)
    return MigrationCheck(pending, accepted, seconds, irreversible=sorted(one_way))


def _irreversible(
    env: ReleaseEnvironment,
    target: Target,
    image: str,
    *,
    start: str,
    end: str | None,
    pending: list[str] | None = None,
) -> dict[str, str]:
    """Revisions (`pending`, or all on the way) whose downgrade from `start` to `end`
    raises or renders nothing, with the reason."""
    revisions = f"{start}:{end or 'base'}"
    downgrade = render_offline_sql(env, target, image, verb="downgrade", revisions=revisions)
    rendered = split_revisions(downgrade.sql)
    reasons = {}
    checked = [r.revision for r in rendered] if pending is None else pending
    if downgrade.error:
        if not rendered:
            raise StepFailed(f"cannot render the downgrades of {image}: {downgrade.error}")
        failing = rendered.pop().revision  # Alembic names a revision before running it
        checked = [r.revision for r in rendered]
        reasons[failing] = (
            f"revision {failing} is irreversible: its downgrade raises ({downgrade.error}), "
            "so a rollback could not undo it"
        )
    for revision in irreversible(checked, rendered):
        reasons[revision] = (
            f"revision {revision} is irreversible: its downgrade changes nothing, so a "
            "rollback could not undo it"
        )
    return reasons


@task(name="check-downgrade", cache_policy=NO_CACHE, **transient_retries(2))
def check_downgrade(
    env: ReleaseEnvironment, target: Target, image: str, *, current: str, revision: str | None
) -> None:
    """Before a restore of an earlier release changes anything: `image` (what runs now,
    it knows the newer revisions) can take the schema from `current` down to `revision`, and
    every revision on the way really downgrades."""
    if one_way := _irreversible(env, target, image, start=current, end=revision):
        raise MigrationRefused(
            f"the way back is refused: {'; '.join(one_way.values())}. Restore the "
            "database from a backup instead, or roll forward"
        )
    get_run_logger().info(f"schema can go back from {current} to {revision or 'base'}")


# The rehearsal proves which database it talks to before it changes anything: the scratch
# database is created holding a marker revision that exists nowhere else, and the one-off's
# first command, `alembic current` (read-only), must report it through the application's
# own configuration. Only then does it clear the marker and run the steps; otherwise it
# exits with NOT_SCRATCH and changes nothing.
_REHEARSE_SCRIPT = (
    'if ! alembic current 2>&1 | grep -q "$REHEARSAL_MARKER"; then '
    'echo "{not_scratch}"; exit {code}; fi; '
    "set -e; alembic stamp --purge base >/dev/null 2>&1; "
    'for step in "$@"; do echo "{marker} $step"; alembic $step; done'
)
_STEP_MARKER = "== rehearsal: alembic"
_NOT_SCRATCH_MARKER = "== rehearsal: the application does not use the scratch database"
NOT_SCRATCH = 97
_DATABASE_VALUE = re.compile(r"^(sqla\+)?postgres(ql)?(\+\w+)?://")
_DATABASE_NAME = re.compile(r"DATABASE|(^|_)DB(_|$)")


class RehearsalNotIsolated(ConfigurationError):
    """The rehearsal's one-off would not talk to its scratch database: it refused to run."""


def rehearse(
    env: ReleaseEnvironment,
    target: Target,
    image: str,
    *,
    current: str | None,
    head: str,
    round_trip: bool,
) -> float:
    """upgrade head -> downgrade current -> upgrade head on a scratch database holding the
    current schema; the seconds it took. Refuses unless the one-off proves it talks to the
    scratch database; failing, the release must not start."""
    logger = get_run_logger()
    steps = [f"upgrade {current}"] if current else []
    steps.append("upgrade head")
    if round_trip:
        steps += [f"downgrade {current or 'base'}", "upgrade head"]
    real_url = env.database_url_value()
    real_before = schema_fingerprint(real_url)
    marker = f"rehearsal_{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    with scratch_database(real_url, marker) as (name, url):
        logger.info(f"rehearsing {' -> '.join(steps)} on scratch database {name}")
        script = _REHEARSE_SCRIPT.format(
            not_scratch=_NOT_SCRATCH_MARKER, code=NOT_SCRATCH, marker=_STEP_MARKER
        )
        result = target.run_oneoff(
            image,
            ["sh", "-c", script, "rehearse", *steps],
            env={
                **env.database_variables().environment(url),
                "REHEARSAL_MARKER": marker,
                "PGOPTIONS": migration_pg_options(env),
            },
            timeout=env.migration_timeout_seconds,
        )
        rehearsed = read_revision(url)
    seconds = time.monotonic() - started
    if schema_fingerprint(real_url) != real_before:
        raise StepFailed(
            f"the rehearsal changed the REAL database's schema (it should only touch {name}): "
            "stop releasing to this environment and check which database the application "
            f"reads ({_database_hint(env)})"
        )
    if result.exit_code == NOT_SCRATCH or _NOT_SCRATCH_MARKER in result.output:
        raise RehearsalNotIsolated(
            "migration rehearsal refused: the application in "
            f"{image} did not connect to the scratch database through "
            f"{', '.join(env.database_variables().names)} (`alembic current` did not see the "
            f"marker revision). {_database_hint(env)}"
        )
    if result.exit_code != 0:
        markers = [line for line in result.output.splitlines() if line.startswith(_STEP_MARKER)]
        step = markers[-1].removeprefix("== rehearsal: ") if markers else "the rehearsal"
        raise StepFailed(
            f"rehearsal on a scratch copy of the schema failed at `{step}` "
            f"({migration_error(env, result.output)}): the release was not started"
        )
    if rehearsed != head:
        raise StepFailed(
            f"the rehearsal ended with the scratch database at {rehearsed or 'base'}, not at "
            f"{head}: the migrations did not run where they were rehearsed; refusing"
        )
    logger.info(f"rehearsal passed in {seconds:.1f} s ({len(steps)} alembic runs on {name})")
    return seconds


def _database_hint(env: ReleaseEnvironment) -> str:
    """The likely cause and its fix: the variables in the plain env that look like the
    database the app reads instead."""
    suspects = [
        name
        for name, value in env.env.items()
        if _DATABASE_VALUE.match(value) or _DATABASE_NAME.search(name)
    ]
    if suspects:
        return (
            f"It most likely reads {', '.join(sorted(suspects))}, set in the environment's "
            "plain `env`: remove it from `env` and list it in `database_url_variables` (or, "
            "for a part of the URL, in `database_url_parts`), so it comes from the "
            "`database_url` Secret and the rehearsal can point it at the scratch database"
        )
    return (
        "Name the variable(s) the application reads its database URL from in the "
        "environment's `database_url_variables` (or its parts in `database_url_parts`); "
        "check also that the app keeps Alembic's default version table `alembic_version`"
    )


@contextmanager
def scratch_database(url: str, marker: str | None = None) -> Iterator[tuple[str, str]]:
    """A temporary database on the server of `url`, dropped on exit: (name, URL). With a
    `marker`, its alembic_version holds that revision (what proves a one-off uses it)."""
    real = make_url(url)
    name = f"{(real.database or 'db')[:40]}_rehearsal_{uuid.uuid4().hex[:8]}"
    admin = create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'create database "{name}"'))
    except ProgrammingError as exc:
        admin.dispose()
        raise ConfigurationError(
            f"cannot create the rehearsal database ({str(exc.orig).strip()}): grant the "
            "database user CREATEDB, or set the environment's migration_rehearsal to False"
        ) from None
    except OperationalError as exc:
        admin.dispose()
        raise classify_connection_error(exc, url) from None
    scratch = real.set(database=name).render_as_string(hide_password=False)
    try:
        if marker:
            _mark(scratch, marker)
        yield name, scratch
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


def _mark(url: str, marker: str) -> None:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(text("create table alembic_version (version_num varchar(32) primary key)"))
            conn.execute(text("insert into alembic_version values (:m)"), {"m": marker})
    finally:
        engine.dispose()
