"""Build contexts of the example backend as older, newer or broken checkouts would be."""

import shutil
import uuid
from pathlib import Path

from blocks.application import ROLES
from targets.build import BuildPlan, build_images
from tests.services import REGISTRY_ADDR

BACKEND = Path(__file__).resolve().parents[1] / "examples" / "backend"
MONOREPO = Path(__file__).resolve().parents[1] / "examples" / "monorepo"
MONOREPO_VERSIONS = Path("apps/backend/src/rhesis/backend/alembic/versions")
# One repository per test session: a release never moves a tag, and sessions reuse
# version names (m-v3, v2) for images that are not byte-identical.
TEST_REPOSITORY_PATH = f"tests/backend-{uuid.uuid4().hex[:8]}"
TEST_REPOSITORY = f"{REGISTRY_ADDR}/{TEST_REPOSITORY_PATH}"


# How a backend may read its database (the example reads DATABASE_URL): the seed's own
# variable, or the parts Rhesis' alembic env.py builds the URL from.
READS_DATABASE = {
    "sqlalchemy-url": 'os.environ.get("SQLALCHEMY_DATABASE_URL", "")',
    "url-parts": (
        '"postgresql://{}:{}@{}:{}/{}".format(*(quote_plus(os.environ.get(f"SQLALCHEMY_DB_{p}", '
        '"")) for p in ("USER", "PASS", "HOST", "PORT", "NAME")))'
    ),
}
URL_PARTS = {
    "SQLALCHEMY_DB_USER": "user",
    "SQLALCHEMY_DB_PASS": "password",
    "SQLALCHEMY_DB_HOST": "host",
    "SQLALCHEMY_DB_PORT": "port",
    "SQLALCHEMY_DB_NAME": "database",
}


def backend_context(
    root: Path,
    head: str = "0003",
    extra: dict[str, str] | None = None,
    reads_database: str | None = None,
    **faults: str,
) -> Path:
    """A copy of examples/backend as an older or newer checkout would be: revisions after
    `head` removed, `extra` files (e.g. new revisions) added, and failure switches baked in
    as the Dockerfile's defaults (`fail_health="1"`, `fail_migration="0003"`,
    `migration_delay="3"`, `crash_after="0.5"`, `health_database_down="1"`,
    `health_delay="3"`: see the Dockerfile). `reads_database` (a key of READS_DATABASE)
    makes the app read its database from other variables than DATABASE_URL."""
    root.mkdir(parents=True, exist_ok=True)
    context = root / f"backend-{head}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(BACKEND, context, ignore=shutil.ignore_patterns("__pycache__"))
    for revision in (context / "migrations" / "versions").glob("*.py"):
        if revision.name.split("_", 1)[0] > head:
            revision.unlink()
    for rel, text in (extra or {}).items():
        (context / rel).write_text(text)
    if reads_database:
        settings = context / "app" / "settings.py"
        text = settings.read_text()
        assert 'os.environ.get("DATABASE_URL", "")' in text, "the example reads its URL elsewhere"
        text = text.replace('os.environ.get("DATABASE_URL", "")', READS_DATABASE[reads_database])
        settings.write_text(
            text.replace("import os\n", "import os\nfrom urllib.parse import quote_plus\n")
        )
    dockerfile = context / "Dockerfile"
    for name, value in faults.items():
        arg = f"ARG {name.upper()}="
        assert arg in dockerfile.read_text(), f"Dockerfile has no {arg}"
        dockerfile.write_text(dockerfile.read_text().replace(arg, arg + value))
    return context


def build_image(
    context: Path, version: str, args: dict[str, str] | None = None, repository=TEST_REPOSITORY
) -> str:
    """A checkout of the example backend built (BuildKit) as repository:version."""
    plan = BuildPlan(
        context=context,
        dockerfile=context / "Dockerfile",
        repository=repository,
        version=version,
        stages=dict.fromkeys(ROLES),
        args=args or {},
    )
    return build_images(plan, lambda _: None)["api"].reference


def monorepo_context(root: Path, head: str = "0004", fail_health: bool = False) -> Path:
    """A copy of examples/monorepo as a checkout at `head` would be (later revisions
    removed), its /health answering 503 with `fail_health`."""
    root.mkdir(parents=True, exist_ok=True)
    context = root / f"monorepo-{head}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(MONOREPO, context, ignore=shutil.ignore_patterns("__pycache__"))
    for revision in (context / MONOREPO_VERSIONS).glob("*.py"):
        if revision.name.split("_", 1)[0] > head:
            revision.unlink()
    if fail_health:
        dockerfile = context / "apps" / "backend" / "Dockerfile"
        dockerfile.write_text(
            dockerfile.read_text().replace("ARG FAIL_HEALTH=", "ARG FAIL_HEALTH=1")
        )
    return context
