"""check-migrations: before anything changes, make sure the pending revisions are safe.

1. Render each pending revision's upgrade and downgrade SQL offline in the NEW image, one
   revision at a time (targets/image_check.py), with every database variable pointing
   at a host that does not exist: rendering talks to nothing. A revision that cannot be
   rendered offline (a data migration using op.get_bind(), SQL loaded from files) is
   named in a warning, not linted, and left to the rehearsal, which runs it online.
2. Lint each rendered upgrade (targets.migration_lint): an operation that breaks the
   running version is refused; on a first release (no version runs, database at base)
   there is nothing to break, so findings are reported only.
3. A revision whose downgrade raises NotImplementedError, or changes nothing while its
   upgrade changes the schema, is irreversible and refused (a rollback could not undo
   it). Every pending revision is examined; one whose upgrade and downgrade both do
   nothing is reversible.
4. Rehearse on a scratch database on the same server: bring it to the current revision
   (replaying the new image's own revisions: nothing needed on the runner, works for every
   target), then upgrade head -> downgrade current -> upgrade head, and drop it. The
   one-off gets the scratch URL under every name the application reads its database from
   (`application.database`) and first proves, through the app's own Alembic
   configuration, that it talks to the scratch database; if it cannot, the rehearsal
   refuses before it changes anything, naming the variable to fix.

`allow_breaking` lists the revisions whose findings the caller accepts.
"""

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

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
from targets.image_check import NOT_SCRATCH, NOT_SCRATCH_MARKER, STEP_MARKER
from targets.migration_lint import (
    PROBE_MARKER,
    ProbedRevision,
    UnknownRevision,
    lint,
    parse_probe,
)
from tasks.migrate import migration_error, migration_pg_options
from tasks.retry import transient_retries

# What the offline render sees as its database: a host that cannot exist (RFC 2606).
NOWHERE = "postgresql://offline:offline@offline-render.invalid:5432/offline"


class MigrationRefused(StepFailed):
    """A pending revision would break the running version or could not be rolled back."""


@dataclass(frozen=True)
class MigrationCheck:
    pending: list[str]
    accepted: list[str] = field(default_factory=list)  # refusals waived by allow_breaking
    rehearsal_seconds: float | None = None
    irreversible: list[str] = field(default_factory=list)  # accepted one-way revisions
    warnings: list[str] = field(default_factory=list)  # reported, not refused


@task(name="check-migrations", cache_policy=NO_CACHE, **transient_retries(2))
def check_migrations(
    env: ReleaseEnvironment,
    target: Target,
    image: str,
    *,
    current: str | None,
    allow_breaking: list[str] | None = None,
    first_release: bool = False,
) -> MigrationCheck:
    """Refuse breaking or irreversible pending revisions, then rehearse the round trip."""
    logger = get_run_logger()
    revisions = probe_revisions(env, target, image, lower=current, upper="heads")
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
    warnings = [
        f"revision {r.revision} cannot be rendered offline ({r.unrenderable}): it is not "
        "linted; the rehearsal runs it online"
        for r in revisions
        if r.unrenderable
    ]
    findings = [(f.revision, str(f)) for f in lint([r.upgrade for r in revisions if r.upgrade])]
    if first_release:  # no running version that a breaking change could break
        warnings += [f"{reason} (reported only: no version runs yet)" for _, reason in findings]
        findings = []
    one_way = {
        r.revision: f"revision {r.revision} is irreversible: {r.irreversible}, so a rollback "
        "could not undo it"
        for r in revisions
        if r.irreversible
    }
    problems = findings + list(one_way.items())
    refused = [reason for revision, reason in problems if revision not in allowed]
    if refused:
        breaking = sorted({revision for revision, _ in problems} - allowed)
        raise MigrationRefused(
            f"pending revisions refused: {'; '.join(refused)}. If this is intended, "
            f"allow it explicitly: allow_breaking={breaking}"
        )
    for warning in warnings:
        logger.warning(warning)
    accepted = [reason for _, reason in problems]
    for reason in accepted:
        logger.warning(f"accepted by allow_breaking: {reason}")
    check = MigrationCheck(pending, accepted, irreversible=sorted(one_way), warnings=warnings)
    if not env.migration_rehearsal:
        logger.info("rehearsal is off for this environment (migration_rehearsal=False)")
        return check
    round_trip = not one_way  # an accepted irreversible revision cannot be rehearsed back
    seconds = rehearse(env, target, image, current=current, head=pending[-1], round_trip=round_trip)
    return replace(check, rehearsal_seconds=seconds)


class SharedProbes:
    """The probes of the releases of one fan-out (flows/fan_out.py), which release one
    pinned image at once: each probe (image, revision range, the one-off's settings) runs
    once, and the releases asking for it meanwhile wait for its answer. A probe that fails
    is forgotten, so a retry probes again."""

    def __init__(self):
        self._lock = threading.Lock()
        self._answers: dict[str, Future] = {}

    def answer(self, key: str, probe: Callable[[], list[ProbedRevision]]):
        with self._lock:
            answer, asks = self._answers.get(key), key not in self._answers
            if asks:
                answer = self._answers[key] = Future()
        if not asks:
            get_run_logger().info(
                "the image's revisions are probed once for this fan-out: "
                "the answer of another environment's probe stands"
            )
            return answer.result()
        try:
            answer.set_result(probe())
        except BaseException as exc:
            with self._lock:
                del self._answers[key]
            answer.set_exception(exc)
        return answer.result()


_SHARED_PROBES: ContextVar[SharedProbes | None] = ContextVar("shared_probes", default=None)


@contextmanager
def shared_probes() -> Iterator[None]:
    """Within it (and in the threads and tasks started from its context), equal probes run
    once: see SharedProbes."""
    token = _SHARED_PROBES.set(SharedProbes())
    try:
        yield
    finally:
        _SHARED_PROBES.reset(token)


def probe_revisions(
    env: ReleaseEnvironment, target: Target, image: str, *, lower: str | None, upper: str
) -> list[ProbedRevision]:
    """The revisions of `image` in (lower, upper], rendered offline one by one (once per
    fan-out: SharedProbes)."""
    shared = _SHARED_PROBES.get()
    if shared is None:
        return _probe(env, target, image, lower=lower, upper=upper)
    # What the one-off sees besides the image: its command and the environment's settings
    # that become container variables (the probe's database variables point nowhere).
    settings = [env.target, env.application.model_dump(mode="json"), env.env, env.env_file]
    asked = json.dumps([image, lower, upper, *settings, env.secrets], sort_keys=True)
    key = hashlib.sha256(asked.encode()).hexdigest()
    return shared.answer(key, lambda: _probe(env, target, image, lower=lower, upper=upper))


def _probe(
    env: ReleaseEnvironment, target: Target, image: str, *, lower: str | None, upper: str
) -> list[ProbedRevision]:
    """Run the probe in a one-off. A one-off whose output cannot be read is refused: the
    revisions would go unchecked."""
    result = target.run_oneoff(
        image,
        env.application.migrate.cli().probe(lower, upper),
        env=env.database_variables().environment(NOWHERE),
        timeout=env.migration_timeout_seconds,
    )
    try:
        revisions = parse_probe(result.output)
    except UnknownRevision as exc:
        raise MigrationRefused(
            f"the database is at revision {lower}, which {image} does not know: the image is "
            "older than the schema. Release a newer image, or first downgrade the schema with "
            f"the image that brought {lower} (Alembic: {exc})"
        ) from None
    if result.exit_code != 0:
        raise StepFailed(
            f"cannot read the revisions of {image} (exit {result.exit_code}): "
            f"{migration_error(env, result.output)}"
        )
    if PROBE_MARKER not in result.output:
        raise StepFailed(
            f"the migration check cannot read the revisions of {image}: the {env.target} "
            f"one-off succeeded but its output did not reach the check ({result.output.strip()}"
            "). Unchecked migrations are not released: make the one-off's output readable "
            "as said above, then release again"
        )
    return revisions


@task(name="check-downgrade", cache_policy=NO_CACHE, **transient_retries(2))
def check_downgrade(
    env: ReleaseEnvironment, target: Target, image: str, *, current: str, revision: str | None
) -> None:
    """Before a restore of an earlier release changes anything: `image` (the migrate image
    that runs now: it knows the newer revisions) can take the schema from `current` down to
    `revision`, and every revision on the way really downgrades."""
    revisions = probe_revisions(env, target, image, lower=revision, upper=current)
    one_way = [
        f"revision {r.revision} is irreversible: {r.irreversible}, so a rollback could not undo it"
        for r in revisions
        if r.irreversible
    ]
    if one_way:
        raise MigrationRefused(
            f"the way back is refused: {'; '.join(one_way)}. Restore the database from a "
            "backup instead, or roll forward"
        )
    get_run_logger().info(f"schema can go back from {current} to {revision or 'base'}")


# The rehearsal proves which database it talks to before it changes anything: the scratch
# database is created holding a marker revision that exists nowhere else, and the one-off
# first reads `alembic current` (read-only) through the application's own configuration,
# which must report it; otherwise it exits NOT_SCRATCH having changed nothing
# (targets/image_check.py).


# What suggests a plain variable holds the database the app reads (named in the refusal).
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
    cli = env.application.migrate.cli()
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
        result = target.run_oneoff(
            image,
            cli.rehearse(marker, steps),
            env={
                **env.database_variables().environment(url),
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
    if result.exit_code == NOT_SCRATCH or NOT_SCRATCH_MARKER in result.output:
        raise RehearsalNotIsolated(
            "migration rehearsal refused: the application in "
            f"{image} did not connect to the scratch database through "
            f"{', '.join(env.database_variables().names)} (`alembic current` did not see the "
            f"marker revision). {_database_hint(env)}"
        )
    if result.exit_code != 0:
        markers = [line for line in result.output.splitlines() if line.startswith(STEP_MARKER)]
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
    logger.info(f"rehearsal passed in {seconds:.1f} s ({len(steps)} alembic steps on {name})")
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
            "plain `env`: remove it from `env` and list it in the application spec's "
            "`database.url_variables` (or, for a part of the URL, in `database.url_parts`), "
            "so it comes from the "
            "`database_url` Secret and the rehearsal can point it at the scratch database"
        )
    return (
        "Name the variable(s) the application reads its database URL from in the "
        "application spec's `database.url_variables` (or its parts in `database.url_parts`); "
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
