"""Migration safety against real PostgreSQL and real images: breaking revisions are refused
before any change, irreversible ones are named up front, the downgrade is rehearsed on a
scratch database, rollback lands on the recorded revision, and a busy table fails fast."""

import re
import textwrap

import httpx
import psycopg
import pytest

from blocks.environment import connect_target
from flows.errors import ReleaseFailed
from flows.lock import in_flight
from flows.release import release
from ledger.store import Ledger
from targets.database import alembic_in_process, read_revision
from targets.docker_host import L_ENV
from targets.errors import StepFailed
from targets.migration_lint import lint
from targets.registry import push_image, registry_auth
from tasks.check_migrations import MigrationRefused, check_migrations, probe_revisions
from tests.conftest import BACKEND, backend_context, build_image
from tests.releases import logged, refused, schema, served_version

pytestmark = [
    pytest.mark.migrations,
    pytest.mark.docker,
    pytest.mark.xdist_group("migration-safety"),  # shares the module's images
]


def revision(rev: str, down: str, upgrade: str, downgrade: str = "pass") -> str:
    body = textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")
    undo = textwrap.indent(textwrap.dedent(downgrade).strip(), "    ")
    return (
        f'"""sample {rev}"""\n\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision = "{rev}"\ndown_revision = "{down}"\nbranch_labels = None\n'
        f"depends_on = None\n\n\ndef upgrade() -> None:\n{body}\n\n\n"
        f"def downgrade() -> None:\n{undo}\n"
    )


def chain(*upgrades: str | tuple[str, str]) -> dict[str, str]:
    """Revisions 0004, 0005, ... after the example's 0003: `extra` files for an image."""
    files, down = {}, "0003"
    for number, step in enumerate(upgrades, start=4):
        upgrade, downgrade = step if isinstance(step, tuple) else (step, "pass")
        rev = f"{number:04d}"
        files[f"migrations/versions/{rev}_sample.py"] = revision(rev, down, upgrade, downgrade)
        down = rev
    return files


CONCURRENTLY = """
with op.get_context().autocommit_block():
    op.create_index({args}, postgresql_concurrently=True)
"""
# rule -> (a revision that breaks the running version, its safe alternative)
RULE_SAMPLES = {
    "ban-drop-column": (
        'op.drop_column("projects", "description")',
        'op.alter_column("projects", "description", comment="deprecated: drop next release")',
    ),
    "ban-drop-table": (
        'op.drop_table("test_sets")',
        'op.create_table_comment("test_sets", "deprecated: drop next release")',
    ),
    "renaming-column": (
        'op.alter_column("projects", "name", new_column_name="title")',
        'op.add_column("projects", sa.Column("title", sa.String(200)))\n'
        'op.execute("UPDATE projects SET title = name")',
    ),
    "renaming-table": (
        'op.rename_table("test_sets", "prompts")',
        'op.create_table("prompts", sa.Column("id", sa.Integer, primary_key=True))',
    ),
    "changing-column-type": (
        'op.alter_column("projects", "name", type_=sa.String(100))',
        'op.add_column("projects", sa.Column("short_name", sa.String(100)))',
    ),
    "adding-required-field": (
        'op.add_column("projects", sa.Column("owner", sa.Text, nullable=False))',
        'op.add_column("projects", sa.Column("owner", sa.Text, nullable=False, '
        'server_default="unknown"))',
    ),
    "adding-not-nullable-field": (
        'op.alter_column("projects", "description", nullable=False)',
        'op.execute("ALTER TABLE projects ADD CONSTRAINT description_set '
        'CHECK (description IS NOT NULL) NOT VALID")',
    ),
    "require-concurrent-index-creation": (
        'op.create_index("ix_projects_name", "projects", ["name"])',
        CONCURRENTLY.format(args='"ix_projects_name", "projects", ["name"]'),
    ),
    "constraint-missing-not-valid": (
        'op.create_check_constraint("name_set", "projects", "name <> \'\'")',
        "op.execute(\"ALTER TABLE projects ADD CONSTRAINT name_set CHECK (name <> '') NOT VALID\")",
    ),
    "disallowed-unique-constraint": (
        'op.create_unique_constraint("uq_projects_name", "projects", ["name"])',
        CONCURRENTLY.format(args='"uq_projects_name", "projects", ["name"], unique=True')
        + 'op.execute("ALTER TABLE projects ADD CONSTRAINT uq_projects_name '
        'UNIQUE USING INDEX uq_projects_name")',
    ),
}

ADD_OWNER = (
    'op.add_column("projects", sa.Column("owner", sa.Text))',
    'op.drop_column("projects", "owner")',
)
THREE_REVISIONS = chain(
    ADD_OWNER,
    (
        'op.create_table("labels", sa.Column("id", sa.Integer, primary_key=True))',
        'op.drop_table("labels")',
    ),
    (
        'op.add_column("labels", sa.Column("name", sa.Text))',
        'op.drop_column("labels", "name")',
    ),
)
VARIANTS = {
    "ms-samples": dict(extra=chain(*(s for pair in RULE_SAMPLES.values() for s in pair))),
    "ms-breaking": dict(extra=chain(('op.drop_column("projects", "description")', "pass"))),
    "ms-one-way": dict(
        extra=chain(
            ('op.add_column("projects", sa.Column("a", sa.Text))', "raise NotImplementedError"),
            ('op.add_column("projects", sa.Column("b", sa.Text))', "pass"),
        )
    ),
    "ms-one-way-unhealthy": dict(
        extra=chain(
            ('op.add_column("projects", sa.Column("a", sa.Text))', "raise NotImplementedError"),
        ),
        fail_health="1",
    ),
    "ms-bad-downgrade": dict(
        extra=chain((ADD_OWNER[0], 'op.drop_column("projects", "ownr")')),
    ),
    "ms-reversible-drop": dict(
        extra=chain(
            (
                'op.drop_column("projects", "description")',
                'op.add_column("projects", sa.Column("description", sa.Text))',
            )
        )
    ),
    "ms-three": dict(extra=THREE_REVISIONS),
    "ms-three-unhealthy": dict(extra=THREE_REVISIONS, fail_health="1"),
}


@pytest.fixture(scope="module")
def image(engine, registry, tmp_path_factory):
    """Build and push each sample variant once for the module: image(version) -> pinned."""
    auth = registry_auth(registry.username, registry.password)
    root = tmp_path_factory.mktemp("migration-safety")
    built: dict[str, str] = {}

    def get(version: str) -> str:
        if version not in built:
            variant = dict(VARIANTS[version])
            context = backend_context(root, "0003", variant.pop("extra"))
            args = {name.upper(): value for name, value in variant.items()}
            reference = build_image(context, version, args)
            built[version], _ = push_image(engine, reference, auth, lambda _: None)
        return built[version]

    return get


@pytest.fixture
def environment(make_env, database):
    env = make_env(database, worker_count=0, migration_lock_timeout="1s")
    env.save(env.environment, overwrite=True)
    return env


@pytest.fixture
def at_0003(pg, database) -> str:
    """The test database migrated to the example's head (0003)."""
    url = pg.url(database)
    alembic_in_process(str(BACKEND / "migrations"), url, "upgrade", "0003")
    return url


def columns(pg, database, table: str) -> set[str]:
    rows = pg.query(
        database, "select column_name from information_schema.columns where table_name = %s", table
    )
    return {r[0] for r in rows}


def rehearsal_databases(pg, database) -> list[str]:
    pattern = database + "_rehearsal_%"
    rows = pg.query(database, "select datname from pg_database where datname like %s", pattern)
    return [r[0] for r in rows]


def containers(engine, env) -> list[str]:
    mine = {"label": f"{L_ENV}={env.environment}"}
    return sorted(c.id for c in engine.containers.list(all=True, filters=mine))


def assert_as_before(engine, pg, database, environment, before: list[str]) -> None:
    """A refused release of the drop-column change left m-v3 running exactly as it was:
    containers, schema, the column, the served version, no lock, no scratch database."""
    assert containers(engine, environment) == before
    assert schema(pg, database) == "0003"
    assert "description" in columns(pg, database, "projects")
    assert served_version(environment) == "m-v3"
    assert in_flight(environment.environment) is None
    assert rehearsal_databases(pg, database) == []


def test_each_rule_is_caught_and_its_safe_alternative_passes(make_env, database, image):
    env = make_env(database)
    probed = probe_revisions(
        env, connect_target(env), image("ms-samples"), lower="0003", upper="heads"
    )
    assert not [r.revision for r in probed if r.upgrade is None]  # every one rendered
    findings = lint([r.upgrade for r in probed])

    by_revision = {}
    for finding in findings:
        by_revision.setdefault(finding.revision, set()).add(finding.rule)
    for index, rule in enumerate(RULE_SAMPLES):
        breaking, safe = f"{4 + 2 * index:04d}", f"{5 + 2 * index:04d}"
        assert rule in by_revision.get(breaking, set()), f"{rule} not caught in {breaking}"
        assert safe not in by_revision, f"safe alternative to {rule} flagged: {by_revision[safe]}"
    drop = next(f for f in findings if f.rule == "ban-drop-column")
    assert str(drop).startswith("revision 0004: drop column (ALTER TABLE projects DROP COLUMN")
    assert "Safe alternative: release code that no longer uses the column first" in str(drop)


def test_a_breaking_release_is_refused_with_nothing_changed(
    environment, engine, pg, database, image, build_backend
):
    release(environment.environment, image=build_backend("m-v3"))
    before = containers(engine, environment)

    with refused(MigrationRefused) as info:
        release(environment.environment, image=image("ms-breaking"))

    message = str(info.value)
    assert "revision 0004: drop column (ALTER TABLE projects DROP COLUMN description;)" in message
    assert "the running version still reads and writes the column" in message
    assert "allow_breaking=['0004']" in message
    assert_as_before(engine, pg, database, environment, before)

    accepted = check_migrations(
        environment,
        connect_target(environment),
        image("ms-breaking"),
        current="0003",
        allow_breaking=["0004"],
    )

    assert accepted.pending == ["0004"] and "drop column" in accepted.accepted[0]
    assert accepted.rehearsal_seconds > 0
    assert schema(pg, database) == "0003"  # the rehearsal ran elsewhere


def test_a_breaking_change_built_here_is_refused_while_it_is_pushed_with_nothing_changed(
    environment, engine, pg, database, build_backend, tmp_path
):
    """Released from source on a Docker host, the check runs on the built image while it
    is pushed (flows/prepare.py): its refusal leaves everything as it was, too."""
    release(environment.environment, image=build_backend("m-v3"))
    before = containers(engine, environment)
    source = backend_context(tmp_path, "0003", VARIANTS["ms-breaking"]["extra"])

    with refused(MigrationRefused) as info:
        release(environment.environment, source=str(source), version="ms-src-breaking")

    assert "revision 0004: drop column" in str(info.value)
    assert_as_before(engine, pg, database, environment, before)
    with Ledger(environment.database_url_value()) as ledger:
        refusal = ledger.history(environment.environment)[0]
    steps = {step.name: step for step in refusal.steps}
    assert refusal.outcome == "failed" and steps["check-migrations"].outcome == "failed"
    push = steps["push"]
    assert steps["check-migrations"].started < push.started + push.seconds  # during the push


@pytest.mark.appspec
def test_a_first_release_reports_breaking_findings_instead_of_refusing_them(
    environment, pg, database, image
):
    """Nothing deployed and the database at base: no running version a breaking change
    could break, so the finding is reported and the release goes on."""
    state = release(environment.environment, image=image("ms-reversible-drop"), return_state=True)

    assert state.result()["outcome"] == "released"
    assert schema(pg, database) == "0004"
    assert "description" not in columns(pg, database, "projects")
    finding = "revision 0004: drop column (ALTER TABLE projects DROP COLUMN description;)"
    assert logged(finding, state.state_details.flow_run_id)
    assert logged("(reported only: no version runs yet)", state.state_details.flow_run_id)
    # The same revision pending under a running version is refused.
    with pytest.raises(MigrationRefused, match=re.escape(finding)):
        check_migrations(
            environment,
            connect_target(environment),
            image("ms-reversible-drop"),
            current="0003",
        )


def test_an_image_older_than_the_schema_is_refused_with_nothing_changed(
    environment, engine, pg, database, build_backend
):
    release(environment.environment, image=build_backend("m-v3"))
    before = containers(engine, environment)

    with refused(MigrationRefused) as info:
        release(environment.environment, image=build_backend("m-v2", head="0002"))

    assert "the database is at revision 0003, which" in str(info.value)
    assert "the image is older than the schema" in str(info.value)
    assert containers(engine, environment) == before
    assert schema(pg, database) == "0003"
    assert served_version(environment) == "m-v3"


def test_irreversible_revisions_are_named_before_the_release_starts(
    make_env, pg, database, at_0003, image
):
    with pytest.raises(MigrationRefused) as info:
        env = make_env(database)
        check_migrations(env, connect_target(env), image("ms-one-way"), current="0003")

    message = str(info.value)
    assert "revision 0004 is irreversible: its downgrade raises (NotImplementedError" in message
    assert "revision 0005 is irreversible: its downgrade changes nothing" in message
    assert "allow_breaking=['0004', '0005']" in message
    assert read_revision(at_0003) == "0003"
    assert rehearsal_databases(pg, database) == []


def test_rehearsal_catches_a_broken_downgrade(make_env, pg, database, at_0003, image):
    with pytest.raises(StepFailed) as info:
        env = make_env(database)
        check_migrations(env, connect_target(env), image("ms-bad-downgrade"), current="0003")

    message = str(info.value)
    assert "rehearsal on a scratch copy of the schema failed at `alembic downgrade 0003`" in message
    assert 'column "ownr" of relation "projects" does not exist' in message
    assert read_revision(at_0003) == "0003"
    assert "owner" not in columns(pg, database, "projects")
    assert rehearsal_databases(pg, database) == []  # the scratch database is always dropped


@pytest.mark.faults
def test_rollback_across_three_revisions_lands_on_the_recorded_one(
    environment, pg, database, image, build_backend
):
    release(environment.environment, image=build_backend("m-v3"))
    created = httpx.post(
        f"http://127.0.0.1:{environment.api_port}/projects",
        json={"name": "written before the release"},
        timeout=5,
    )
    assert created.status_code == 201

    with pytest.raises(ReleaseFailed) as info:
        release(environment.environment, image=image("ms-three-unhealthy"))

    message = str(info.value)
    assert "failed at step 'verify-api'" in message
    assert "schema back to 0003" in message
    assert schema(pg, database) == "0003"
    assert "labels" not in {r[0] for r in pg.query(database, "select tablename from pg_tables")}
    assert "owner" not in columns(pg, database, "projects")
    assert pg.query(database, "select name from projects") == [("written before the release",)]
    assert served_version(environment) == "m-v3"


@pytest.mark.faults
def test_rollback_refuses_to_downgrade_through_an_accepted_irreversible_revision(
    environment, pg, database, image, build_backend
):
    release(environment.environment, image=build_backend("m-v3"))

    with pytest.raises(ReleaseFailed) as info:
        release(
            environment.environment, image=image("ms-one-way-unhealthy"), allow_breaking=["0004"]
        )

    message = str(info.value)
    assert "failed at step 'verify-api'" in message
    assert "Rolled back and verified: API back to 1 x m-v3" in message
    assert "schema NOT downgraded: revision(s) 0004 were released as irreversible" in message
    assert schema(pg, database) == "0004"  # nothing dropped behind anyone's back
    assert served_version(environment) == "m-v3"
    assert in_flight(environment.environment) is None  # the next release may start


@pytest.fixture
def busy_projects(pg, database):
    """Another session holding ACCESS EXCLUSIVE on projects in an open transaction."""
    holder = psycopg.connect(pg.url(database))
    yield lambda: holder.execute("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
    holder.rollback()
    holder.close()


@pytest.mark.faults
def test_a_busy_table_makes_the_migration_time_out_and_the_release_roll_back(
    environment, pg, database, image, build_backend, busy_projects
):
    release(environment.environment, image=build_backend("m-v3"))
    busy_projects()

    with pytest.raises(ReleaseFailed) as info:
        release(environment.environment, image=image("ms-three"))

    message = str(info.value)
    assert "failed at step 'migrate'" in message
    assert "migration waited longer than lock_timeout=1s for a lock on projects" in message
    assert "retry when the table is not busy, or raise migration_lock_timeout" in message
    assert schema(pg, database) == "0003"
    assert served_version(environment) == "m-v3"
