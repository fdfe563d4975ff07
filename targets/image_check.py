"""The part of check-migrations that runs INSIDE the application's migrate image (passed as
the source of `python -c`, run by the Python that runs its Alembic, in the directory where
its Alembic runs). Two commands, each one Python process:

    probe CONFIG LOWER UPPER
        For each revision in (LOWER, UPPER], oldest first, render its upgrade and its
        downgrade SQL offline, one revision at a time, so that one that cannot be rendered
        is named without hiding the others. Offline only: nothing connects to a database.
        Prints, after MARKER, {"probe": "started"}, then {"known": false, "error"} if LOWER
        is not a revision of this image, else one line per revision:
        {"revision", "down_revision", "upgrade": {"sql"} | {"error", "kind"}, "downgrade": ...}

    rehearse CONFIG SCRATCH_MARKER STEP...
        Prove that the application's own configuration points at the scratch database:
        `alembic current` must report SCRATCH_MARKER, the revision the scratch database
        was created with and that exists nowhere else. If it does not, exit NOT_SCRATCH
        having changed nothing. Then clear the marker and run each STEP ("upgrade head",
        "downgrade 0002", ...), printing STEP_MARKER before each; the first failure ends it.
"""

import io
import json
import sys

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

MARKER = "@@revision-probe@@ "
STEP_MARKER = "== rehearsal: alembic"
NOT_SCRATCH_MARKER = "== rehearsal: the application does not use the scratch database"
NOT_SCRATCH = 97


def _config(config_file: str) -> Config:
    config = Config(config_file)
    config.attributes["skip_logging_config"] = True
    return config


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def render(config: Config, verb: str, revisions: str) -> dict:
    config.output_buffer = io.StringIO()
    try:
        getattr(command, verb)(config, revisions, sql=True)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, none hidden
        return {"error": _error(exc), "kind": type(exc).__name__}
    return {"sql": config.output_buffer.getvalue()}


def probe(config_file: str, lower: str, upper: str) -> None:
    print(MARKER + json.dumps({"probe": "started"}), flush=True)  # the output is readable
    config = _config(config_file)
    script = ScriptDirectory.from_config(config)
    try:
        if lower:
            script.get_revision(lower)
        revisions = list(script.iterate_revisions(upper, lower or "base"))
    except BaseException as exc:  # noqa: BLE001 - e.g. a revision the image does not know
        print(MARKER + json.dumps({"known": False, "error": _error(exc)}))
        return
    for revision in reversed(revisions):
        down = revision.down_revision
        down = down if isinstance(down, str) or down is None else ",".join(down)
        line = {
            "revision": revision.revision,
            "down_revision": down,
            "upgrade": render(config, "upgrade", f"{down or 'base'}:{revision.revision}"),
            "downgrade": render(config, "downgrade", f"{revision.revision}:{down or 'base'}"),
        }
        print(MARKER + json.dumps(line), flush=True)


def rehearse(config_file: str, scratch_marker: str, *steps: str) -> None:
    config = _config(config_file)
    config.stdout = io.StringIO()
    try:
        command.current(config)
        seen = config.stdout.getvalue()
    except BaseException as exc:  # noqa: BLE001 - an unknown revision is what we hope for
        seen = _error(exc)
    if scratch_marker not in seen:
        print(NOT_SCRATCH_MARKER)
        print(f"alembic current said: {seen.strip()[-500:] or 'nothing'}")
        sys.exit(NOT_SCRATCH)
    command.stamp(config, "base", purge=True)
    for step in steps:
        verb, revision = step.split()
        print(f"{STEP_MARKER} {step}", flush=True)
        try:
            getattr(command, verb)(config, revision)
        except BaseException as exc:  # noqa: BLE001 - reported; the release will not start
            print(_error(exc), flush=True)
            sys.exit(1)


if __name__ == "__main__":
    {"probe": probe, "rehearse": rehearse}[sys.argv[1]](*sys.argv[2:])
