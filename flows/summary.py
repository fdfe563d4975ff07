"""Per-step timing and the release summary artifact (markdown)."""

import time
from dataclasses import dataclass, field

from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture


@dataclass
class Step:
    name: str
    seconds: float | None = None
    future: PrefectFuture | None = field(default=None, repr=False)

    @property
    def outcome(self) -> str:
        state = self.future.state if self.future else None
        if state is None or not state.is_final():
            return "running"
        return "ok" if state.is_completed() else state.name.lower()


@dataclass
class Timeline:
    """Steps in the order they were started, with wall time from submit to done."""

    steps: list[Step] = field(default_factory=list)

    def submit(self, name: str, task, *args, **kwargs) -> PrefectFuture:
        step = Step(name)
        started = time.monotonic()
        step.future = task.submit(*args, **kwargs)
        step.future.add_done_callback(
            lambda _: setattr(step, "seconds", time.monotonic() - started)
        )
        self.steps.append(step)
        return step.future

    def run(self, name: str, task, *args, **kwargs):
        """Run one step and return its result (raising its error)."""
        return self.submit(name, task, *args, **kwargs).result()

    def failed_step(self) -> str | None:
        return next((s.name for s in self.steps if s.outcome not in ("ok", "running")), None)


@dataclass
class ReleaseSummary:
    environment: str
    outcome: str  # released | no-op | dry-run | rolled back | rollback failed | failed
    image: str | None
    version: str | None
    previous_version: str | None
    schema_before: str | None
    schema_after: str | None
    message: str
    steps: list[Step]

    def to_dict(self) -> dict:
        return {
            "environment": self.environment,
            "outcome": self.outcome,
            "image": self.image,
            "version": self.version,
            "previous_version": self.previous_version,
            "schema_before": self.schema_before,
            "schema_after": self.schema_after,
            "message": self.message,
            "steps": [
                {"name": s.name, "seconds": s.seconds, "outcome": s.outcome} for s in self.steps
            ],
        }

    def markdown(self) -> str:
        rows = "\n".join(
            f"| {s.name} | {'' if s.seconds is None else f'{s.seconds:.1f} s'} | {s.outcome} |"
            for s in self.steps
        )
        return (
            f"# Release to {self.environment}: {self.outcome}\n\n"
            f"{self.message}\n\n"
            f"| | |\n|---|---|\n"
            f"| image | `{self.image or '-'}` |\n"
            f"| version | {self.previous_version or '-'} -> {self.version or '-'} |\n"
            f"| schema revision | {self.schema_before or 'base'} -> "
            f"{self.schema_after or 'base'} |\n\n"
            f"| step | duration | outcome |\n|---|---|---|\n{rows}\n"
        )

    def publish(self) -> None:
        create_markdown_artifact(
            key=f"release-{self.environment}",
            markdown=self.markdown(),
            description=f"Release summary for {self.environment}",
        )
