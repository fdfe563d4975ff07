"""migrate: upgrade the schema by running the NEW image once against the database, and
downgrade it to an exact recorded revision (the rollback's compensation)."""

from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.environment import ReleaseEnvironment, connect_target
from targets.database import read_revision
from targets.errors import MigrationFailed
from tasks.retry import transient_retries


@dataclass(frozen=True)
class MigrationResult:
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


@task(name="migrate", cache_policy=NO_CACHE, **transient_retries(2))
def migrate(env: ReleaseEnvironment, image: str) -> MigrationResult:
    """`alembic upgrade head` in a one-off container of `image`. Each revision commits on
    its own, so a failure leaves the schema at the last revision that completed."""
    return _run_alembic(env, image, env.migrate_command, "upgrade")


@task(name="downgrade-schema", cache_policy=NO_CACHE, **transient_retries(2))
def downgrade(env: ReleaseEnvironment, image: str, revision: str | None) -> MigrationResult:
    """Downgrade to exactly `revision` (None: base) with `image`'s migration scripts: the
    new image knows the revisions to undo; the old one does not."""
    return _run_alembic(env, image, ["alembic", "downgrade", revision or "base"], "downgrade")


def _run_alembic(
    env: ReleaseEnvironment, image: str, command: list[str], verb: str
) -> MigrationResult:
    logger = get_run_logger()
    url = env.database_url_value()
    before = read_revision(url)
    logger.info(f"schema at {before or 'base (empty)'}: running {' '.join(command)} in {image}")
    result = connect_target(env).run_oneoff(
        image,
        command,
        env={"PGOPTIONS": migration_pg_options(env)},
        timeout=env.migration_timeout_seconds,
    )
    for line in result.output.splitlines():
        if "alembic.runtime.migration" in line and "Running" in line:
            logger.info(line.split("] ", 1)[-1])
    after = read_revision(url)
    if result.exit_code != 0:
        raise MigrationFailed(
            f"alembic {verb} failed (exit {result.exit_code}); schema left at "
            f"{after or 'base'} (was {before or 'base'}): {alembic_error(result.output)}",
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


def alembic_error(output: str) -> str:
    """The exception line Alembic printed last (its error text), or the output's tail."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Failed", "Timeout")) or "error" in head.lower():
            return line
    return " | ".join(lines[-3:]) or "no output"
