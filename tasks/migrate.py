"""migrate: upgrade the schema by running the NEW image once against the database, and
downgrade it to an exact recorded revision (the rollback's compensation). Alembic runs
where the application spec says (`migrate`: directory, config file, executable)."""

import re
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.environment import ReleaseEnvironment
from targets.base import Target
from targets.database import connection_lost, read_revision
from targets.errors import MigrationFailed, TransientError
from tasks.retry import transient_retries


@dataclass(frozen=True)
class MigrationResult:
    before: str | None
    after: str | None


@task(name="migrate", cache_policy=NO_CACHE, **transient_retries(2))
def migrate(env: ReleaseEnvironment, target: Target, image: str) -> MigrationResult:
    """`alembic upgrade head` in a one-off container of `image`. Each revision commits on
    its own, so a failure leaves the schema at the last revision that completed; a lost
    database connection is retried (the revision in flight was rolled back)."""
    return _run_alembic(env, target, image, ("upgrade", "head"), "upgrade")


@task(name="downgrade-schema", cache_policy=NO_CACHE, **transient_retries(2))
def downgrade(
    env: ReleaseEnvironment, target: Target, image: str, revision: str | None
) -> MigrationResult:
    """Downgrade to exactly `revision` (None: base) with `image`'s migration scripts: the
    new image knows the revisions to undo; the old one does not."""
    return _run_alembic(env, target, image, ("downgrade", revision or "base"), "downgrade")


@task(name="upgrade-schema", cache_policy=NO_CACHE, **transient_retries(2))
def upgrade_to(
    env: ReleaseEnvironment, target: Target, image: str, revision: str
) -> MigrationResult:
    """Upgrade to exactly `revision` with `image`'s migration scripts: how a failed restore
    of an earlier release puts back the schema it had downgraded."""
    return _run_alembic(env, target, image, ("upgrade", revision), "upgrade")


def _run_alembic(
    env: ReleaseEnvironment, target: Target, image: str, args: tuple[str, ...], verb: str
) -> MigrationResult:
    logger = get_run_logger()
    url = env.database_url_value()
    before = read_revision(url)
    what = f"alembic {' '.join(args)}"
    logger.info(f"schema at {before or 'base (empty)'}: running {what} in {image}")
    result = target.run_oneoff(
        image,
        env.application.migrate.cli().run(*args),
        env={"PGOPTIONS": migration_pg_options(env)},
        timeout=env.migration_timeout_seconds,
    )
    for line in result.output.splitlines():
        if "alembic.runtime.migration" in line and "Running" in line:
            logger.info(line.split("] ", 1)[-1])
    after = read_revision(url)
    if result.exit_code != 0 and connection_lost(result.output):
        # Each revision is one transaction (migrations/env.py) and PostgreSQL DDL is
        # transactional: a cut connection rolled back the revision in flight, so running
        # alembic again resumes from `after` without doing anything twice.
        raise TransientError(
            f"alembic {verb} lost its database connection; schema left at {after or 'base'} "
            f"(was {before or 'base'}): {migration_error(env, result.output)}"
        )
    if result.exit_code != 0:
        raise MigrationFailed(
            f"alembic {verb} failed (exit {result.exit_code}); schema left at "
            f"{after or 'base'} (was {before or 'base'}): {migration_error(env, result.output)}",
            before=before,
            after=after,
            output=result.output,
        )
    logger.info(f"schema {verb}d: {before or 'base'} -> {after or 'base'}")
    return MigrationResult(before, after)


def migration_pg_options(env: ReleaseEnvironment) -> str:
    """libpq options that keep a migration from blocking the application on a busy table."""
    return (
        f"-c lock_timeout={env.migration_lock_timeout} "
        f"-c statement_timeout={env.migration_statement_timeout}"
    )


def migration_error(env: ReleaseEnvironment, output: str) -> str:
    """What went wrong, in words a release operator can act on: a lock or statement
    timeout says which table and which setting; anything else is Alembic's error text."""
    statement = re.search(r"^\[SQL: (.*?)\]?\s*$", output, re.MULTILINE)
    sql = statement.group(1) if statement else "the migration's statement"
    table = re.search(r"\b(?:TABLE|ON|INTO|UPDATE|FROM)\s+(?:ONLY\s+)?([\w.\"]+)", sql)
    where = table.group(1) if table else "a table"
    if "LockNotAvailable" in output or "lock timeout" in output:
        return (
            f"migration waited longer than lock_timeout={env.migration_lock_timeout} for a "
            f"lock on {where} ({sql}): retry when the table is not busy, or raise "
            "migration_lock_timeout"
        )
    if "statement timeout" in output:
        return (
            f"migration statement ran longer than statement_timeout="
            f"{env.migration_statement_timeout} on {where} ({sql}): run it when the table is "
            "quieter, or raise migration_statement_timeout"
        )
    return alembic_error(output)


def alembic_error(output: str) -> str:
    """The exception line Alembic printed last (its error text), or the output's tail."""
    lines = [
        line.strip()
        for line in output.splitlines()
        if line.strip() and not line.startswith("(Background on this error")
    ]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Failed", "Timeout")) or "error" in head.lower():
            return line
    return " | ".join(lines[-3:]) or "no output"
