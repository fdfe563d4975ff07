"""A saga: one change of an environment (a release, or a restore of an earlier release),
from its first step to its ledger row.

    with Saga.begin(env, "release", source) as saga:   # take the lock, open the ledger row
        snapshot = saga.step("snapshot", take_snapshot, env, saga.target)
        saga.step("migrate", migrate, ..., compensation=Compensation.SCHEMA)
        ...
        return saga.finish("released", message, schema_after)

Each step is timed in the record. A step's compensation is registered, and written to the
environment's lock (the saga log), BEFORE the step runs: a step that fails halfway has
already changed something. When anything in the block raises, the saga ends it:

- nothing registered: the record says "failed" and nothing was changed;
- else the compensating subflow (flows/compensate.py) undoes exactly what was registered,
  in this process, and proves the environment healthy: "rolled back"; if that fails,
  "rollback failed", and the lock is kept for the `rollback` flow to finish the job.

Either way it raises ReleaseFailed (flows/errors.py), saying once what failed and what
changed. Whatever the outcome, the ledger row is closed, the summary and ledger artifacts
are published and the environment's notification block is told.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NoReturn

from prefect import get_run_logger
from prefect.futures import PrefectFuture

from blocks.environment import ReleaseEnvironment, connect_target
from flows import lock
from flows.artifacts import Progress, publish_ledger, publish_summary
from flows.compensate import compensate
from flows.engine import heartbeat_off
from flows.errors import ReleaseFailed, RollbackFailed
from flows.notifications import notifier, notify
from flows.provenance import run_id, run_link, started_by
from ledger.record import IN_PROGRESS, Compensation, ReleaseRecord, Step
from ledger.store import Ledger
from targets.base import Target


@dataclass
class StepRun:
    """A step submitted to run concurrently; its result (or error) marks the step and
    tells `on_end`."""

    step: Step
    future: PrefectFuture
    on_end: Callable[[Step], None]
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def __post_init__(self) -> None:
        self.future.add_done_callback(lambda _: setattr(self, "ended", time.monotonic()))

    def wait(self) -> None:
        """Wait for the step to end, marking it, without raising its error."""
        self.future.wait()
        if self.step.outcome == "running":
            self._mark("ok" if self.future.state.is_completed() else "failed")

    def result(self):
        try:
            value = self.future.result()
        except BaseException:
            self._mark("failed")
            raise
        self._mark("ok")
        return value

    def _mark(self, outcome: str) -> None:
        self.step.seconds = (self.ended or time.monotonic()) - self.started
        self.step.outcome = outcome
        self.on_end(self.step)


class Steps:
    """The steps of one run against one environment and its target adapter, each timed."""

    def __init__(self, env: ReleaseEnvironment, target: Target, steps: list[Step]):
        self.env, self.target, self.steps = env, target, steps
        self.started = time.monotonic()

    def step(self, name: str, task, *args, **kwargs):
        """Run `task` as step `name` and return its result (raising its error)."""
        return self.submit(name, task, *args, **kwargs).result()

    def submit(self, name: str, task, *args, **kwargs) -> StepRun:
        """Start `task` as step `name` concurrently; `.result()` waits for it."""
        step = Step(name=name, started=round(time.monotonic() - self.started, 3))
        self.steps.append(step)
        return StepRun(step, task.submit(*args, **kwargs), self._ended)

    def _ended(self, step: Step) -> None:
        """Told when a step ends (the saga shows its progress)."""


class Saga(Steps):
    """One change of one environment, with the one target adapter it runs against."""

    def __init__(
        self, env: ReleaseEnvironment, target: Target, record: ReleaseRecord, planned: int = 10
    ):
        super().__init__(env, target, record.steps)
        self.record = record
        self.progress = Progress(record, planned)

    @classmethod
    def begin(
        cls,
        env: ReleaseEnvironment,
        kind: Literal["release", "restore"],
        source: str | None,
        schema_undo: Literal["downgrade", "upgrade"] = "downgrade",
        planned: int = 10,
    ) -> "Saga":
        """Check the notification block, connect to the target, take the environment's
        lock and open its ledger row. Nothing has changed if this fails. `planned`: about
        how many steps it will run (for its progress bar)."""
        record = ReleaseRecord(
            environment=env.environment,
            kind=kind,
            source=source,
            schema_undo=schema_undo,
            started_by=started_by(),
            flow_run_id=run_id(),
            flow_run_url=run_link(),
        )
        try:
            notifier(env)
            target = connect_target(env)
        except Exception as exc:
            raise ReleaseFailed.refused(record.title, exc) from exc
        try:
            lock.take(record)
        except Exception as exc:
            target.close()
            raise ReleaseFailed.refused(record.title, exc) from exc
        try:
            with Ledger(env.database_url_value()) as ledger:
                ledger.add(record)
        except Exception as exc:
            lock.free(env.environment)
            target.close()
            raise ReleaseFailed.refused(record.title, exc) from exc
        return cls(env, target, record, planned)

    @classmethod
    def resume(cls, env: ReleaseEnvironment, record: ReleaseRecord) -> "Saga":
        """The saga of a change whose process died (or whose rollback failed): its lock is
        still held; its ledger row, if the database has it, is completed at the end.
        Nothing has changed if this fails (ReleaseFailed)."""
        try:
            with Ledger(env.database_url_value()) as ledger:
                row = ledger.find(env.environment, record.id)
            target = connect_target(env)
        except Exception as exc:
            raise ReleaseFailed.refused(f"rollback of {env.environment}", exc) from exc
        if row is not None:
            log = record.saga_log()
            record = row.model_copy(update={k: getattr(record, k) for k in log})
        if record.snapshot is not None:
            record.took_snapshot(record.snapshot)
        return cls(env, target, record)

    def __enter__(self) -> "Saga":
        return self

    def __exit__(self, _type, error, _traceback) -> None:
        """An error before the saga ended fails it (compensating what it changed)."""
        try:
            if isinstance(error, Exception) and self.record.outcome == IN_PROGRESS:
                self._fail(error)
        finally:
            self.target.close()

    def _ended(self, step: Step) -> None:
        self.progress.step_ended(step)

    def register(self, *compensations: Compensation) -> None:
        """Record undo steps BEFORE their mutations run; each is safe to apply regardless."""
        new = [c for c in compensations if c not in self.record.compensations]
        if new:
            self.record.compensations.extend(new)
            lock.log(self.record)

    def submit(
        self, name: str, task, *args, compensation: Compensation | None = None, **kwargs
    ) -> StepRun:
        """Start step `name`; its `compensation` is registered before it runs."""
        if compensation is not None:
            self.register(compensation)
        return super().submit(name, task, *args, **kwargs)

    # -- endings ----------------------------------------------------------------------------
    def finish(self, outcome: str, message: str, schema_after: str | None) -> dict:
        """End a change that completed: release the lock, record, report."""
        self._end(outcome, message, schema_after)
        return self.record.summary()

    def undo(self, reason: str) -> list[str]:
        """Undo a change that ended without finishing (`reason` says how): compensate
        what its record says happened; what was restored."""
        try:
            return self._roll_back(reason)
        except RollbackFailed as failure:
            message = self.record.message
            raise ReleaseFailed(message, changed=True, outcome="rollback failed") from failure

    def _fail(self, error: Exception) -> NoReturn:
        record = self.record
        step = next((s.name for s in record.steps if s.outcome == "failed"), None)
        if not record.compensations:
            failure = ReleaseFailed.refused(record.title, error, step)
            self._end("failed", str(failure), record.schema_before)
            raise failure from error
        get_run_logger().error(
            f"step '{step}' failed: {error}; rolling back {', '.join(record.compensations)}"
        )
        details = dict(step=step, cause=error, changed=True)
        try:
            restored = self._roll_back(f"{record.title} failed at step '{step}': {error}")
        except RollbackFailed:
            raise ReleaseFailed(record.message, outcome="rollback failed", **details) from error
        raise ReleaseFailed(
            record.message, outcome="rolled back", restored=restored, **details
        ) from error

    def _roll_back(self, reason: str) -> list[str]:
        """Run the compensating subflow and end the record with how it went."""
        record = self.record
        if not record.compensations:
            self._end("failed", f"{reason}; it had changed nothing", record.schema_before)
            return []
        try:
            with heartbeat_off():  # a subflow: its parent's heartbeat, if any, covers it
                restored = compensate(self.env, self.target, record)
        except RollbackFailed as failure:
            self._end("rollback failed", f"{reason}. {failure}", None)
            raise
        record.rollback = restored.done
        message = f"{reason}. Rolled back and verified: {'; '.join(restored.done)}."
        self._end("rolled back", message, restored.schema_revision)
        return restored.done

    def _end(self, outcome: str, message: str, schema_after: str | None) -> None:
        """Close the record; free the lock unless a rollback failed (then the `rollback`
        flow needs it); write the ledger row, publish the artifacts, notify."""
        record = self.record
        record.end(outcome, message, schema_after)
        if outcome != "rollback failed":
            lock.free(record.environment)
        logger = get_run_logger()
        try:
            with Ledger(self.env.database_url_value()) as ledger:
                ledger.save(record)
                publish_ledger(record.environment, ledger.history(record.environment))
        except Exception as exc:  # noqa: BLE001 - reported, the outcome stands
            logger.warning(f"could not write the ledger row {record.short_id}: {exc}")
        publish_summary(record)
        self.progress.ended()
        notify(self.env, record)
        (logger.info if outcome in ("released", "restored", "no-op") else logger.error)(message)
