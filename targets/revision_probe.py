"""Runs INSIDE the application's migrate image (passed as the source of `python -c`), in the
directory where its Alembic runs: for each revision in (LOWER, UPPER], oldest first, it
renders the revision's upgrade and downgrade SQL offline, one revision at a time, so one
that cannot be rendered is named without hiding the others. One JSON line per revision,
after MARKER, on stdout:

    {"revision", "down_revision", "upgrade": {"sql"} | {"error", "kind"}, "downgrade": ...}

after a first line {"probe": "started"}, or {"known": false, "error"} if LOWER is not a
revision of this image.
Arguments: the Alembic config file, LOWER ('' for base), UPPER (a revision or 'heads').
Nothing here connects to a database: offline mode only.
"""

import io
import json
import sys

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

MARKER = "@@revision-probe@@ "


def render(config: Config, verb: str, revisions: str) -> dict:
    config.output_buffer = io.StringIO()
    try:
        getattr(command, verb)(config, revisions, sql=True)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, none hidden
        return {"error": f"{type(exc).__name__}: {exc}".strip(), "kind": type(exc).__name__}
    return {"sql": config.output_buffer.getvalue()}


def main(config_file: str, lower: str, upper: str) -> None:
    print(MARKER + json.dumps({"probe": "started"}), flush=True)  # the output is readable
    config = Config(config_file)
    config.attributes["skip_logging_config"] = True
    script = ScriptDirectory.from_config(config)
    try:
        if lower:
            script.get_revision(lower)
        revisions = list(script.iterate_revisions(upper, lower or "base"))
    except BaseException as exc:  # noqa: BLE001 - e.g. a revision the image does not know
        print(MARKER + json.dumps({"known": False, "error": f"{type(exc).__name__}: {exc}"}))
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


if __name__ == "__main__":
    main(*sys.argv[1:4])
