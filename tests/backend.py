"""Build contexts of the example backend as older, newer or broken checkouts would be."""

import shutil
import uuid
from pathlib import Path

from tests.services import REGISTRY_ADDR

BACKEND = Path(__file__).resolve().parents[1] / "examples" / "backend"
TEST_REPOSITORY = f"{REGISTRY_ADDR}/tests/backend"


def backend_context(
    root: Path, head: str = "0003", extra: dict[str, str] | None = None, **faults: str
) -> Path:
    """A copy of examples/backend as an older or newer checkout would be: revisions after
    `head` removed, `extra` files (e.g. new revisions) added, and failure switches baked in
    as the Dockerfile's defaults (`fail_health="1"`, `fail_migration="0003"`,
    `migration_delay="3"`, `crash_after="0.5"`, `health_database_down="1"`,
    `health_delay="3"`: see the Dockerfile)."""
    root.mkdir(parents=True, exist_ok=True)
    context = root / f"backend-{head}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(BACKEND, context, ignore=shutil.ignore_patterns("__pycache__"))
    for revision in (context / "migrations" / "versions").glob("*.py"):
        if revision.name.split("_", 1)[0] > head:
            revision.unlink()
    for rel, text in (extra or {}).items():
        (context / rel).write_text(text)
    dockerfile = context / "Dockerfile"
    for name, value in faults.items():
        arg = f"ARG {name.upper()}="
        assert arg in dockerfile.read_text(), f"Dockerfile has no {arg}"
        dockerfile.write_text(dockerfile.read_text().replace(arg, arg + value))
    return context
