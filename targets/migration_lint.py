"""Migration lint: which pending Alembic revisions break the version still running, and
which cannot be downgraded. Prefect-free; works on the SQL Alembic renders offline
(`alembic upgrade CURRENT:head --sql`), so what is checked is what would run.

The rules are squawk's (PyPI `squawk-cli`, a maintained PostgreSQL migration linter with a
real SQL parser); this module decides which of them break the running version under
expand/contract (the rest are style advice and are ignored), attributes each finding to its
revision through Alembic's `-- Running upgrade A -> B` comments, and names the safe
alternative. Index rule: any `CREATE INDEX` without `CONCURRENTLY` on a table the revision
did not create is refused, whatever the table's size (a table small today grows; the
concurrent form costs nothing).
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from targets.errors import ConfigurationError, StepFailed
from targets.image_check import MARKER

SQUAWK_PACKAGE = "squawk-cli==2.70.0"
_RUNNING = re.compile(r"^-- Running (upgrade|downgrade) (\S*) -> (\S*)\s*$")
_TRANSACTION_CONTROL = {"BEGIN", "COMMIT"}


@dataclass(frozen=True)
class Rule:
    operation: str
    why: str
    safe_alternative: str


_LATER = "in a later release, once no running version uses it (allow that revision then)"

BREAKING_RULES: dict[str, Rule] = {
    "ban-drop-column": Rule(
        "drop column",
        "the running version still reads and writes the column",
        f"release code that no longer uses the column first; drop it {_LATER}",
    ),
    "ban-drop-table": Rule(
        "drop table",
        "the running version still queries the table",
        f"release code that no longer uses the table first; drop it {_LATER}",
    ),
    "renaming-column": Rule(
        "rename column",
        "the running version queries the old name",
        "add the new column, write both, backfill, switch reads; drop the old column " + _LATER,
    ),
    "renaming-table": Rule(
        "rename table",
        "the running version queries the old name",
        "create the new table, write both, backfill, switch reads; drop the old table " + _LATER,
    ),
    "changing-column-type": Rule(
        "change column type",
        "it rewrites the table under an ACCESS EXCLUSIVE lock and the running version may "
        "write values the new type rejects",
        "add a column of the new type, backfill it in batches, switch reads; drop the old "
        "column " + _LATER,
    ),
    "adding-required-field": Rule(
        "add NOT NULL column without default",
        "the running version's inserts do not set the column and fail",
        "add the column nullable or with a constant server_default; require it " + _LATER,
    ),
    "adding-not-nullable-field": Rule(
        "set NOT NULL on an existing column",
        "it scans the table under an ACCESS EXCLUSIVE lock and the running version's inserts "
        "that leave it NULL fail",
        "ADD CONSTRAINT ... CHECK (column IS NOT NULL) NOT VALID now; VALIDATE CONSTRAINT in "
        "a later revision",
    ),
    "require-concurrent-index-creation": Rule(
        "create index without CONCURRENTLY",
        "it blocks every write to the table while the index builds",
        "inside `with op.get_context().autocommit_block():` use "
        "op.create_index(..., postgresql_concurrently=True)",
    ),
    "constraint-missing-not-valid": Rule(
        "add constraint without NOT VALID",
        "it scans the whole table while blocking writes",
        "add the constraint with NOT VALID, then VALIDATE CONSTRAINT in a later revision",
    ),
    "disallowed-unique-constraint": Rule(
        "add unique constraint",
        "it builds a unique index while blocking writes to the table",
        "CREATE UNIQUE INDEX CONCURRENTLY (in an autocommit_block), then ADD CONSTRAINT ... "
        "UNIQUE USING INDEX",
    ),
}


@dataclass(frozen=True)
class RevisionSql:
    """The statements one revision runs in one direction (Alembic bookkeeping removed)."""

    revision: str
    statements: tuple[str, ...]

    @property
    def changes_schema(self) -> bool:
        return any(s.rstrip(";").upper() not in _TRANSACTION_CONTROL for s in self.statements)


@dataclass(frozen=True)
class Finding:
    revision: str
    rule: str
    operation: str
    statement: str
    why: str
    safe_alternative: str

    def __str__(self) -> str:
        return (
            f"revision {self.revision}: {self.operation} ({self.statement}) breaks the running "
            f"version: {self.why}. Safe alternative: {self.safe_alternative}"
        )


def split_revisions(sql: str) -> list[RevisionSql]:
    """Alembic's offline SQL, one entry per revision in the order they would run. Each
    statement is kept on one line; transaction control stays with the revision it wraps."""
    sections: list[tuple[str, list[str]]] = []
    pending: list[str] = []  # statements before the first revision marker (Alembic's preamble)
    current = pending
    for block in re.split(r";\s*\n", sql + "\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        for line in [line for line in lines if line.startswith("-- ")]:
            marker = _RUNNING.match(line)
            if marker:
                verb, source, destination = marker.groups()
                opening = current[-1:] if current and current[-1] == "BEGIN;" else []
                del current[len(current) - len(opening) :]
                current = opening
                sections.append((destination if verb == "upgrade" else source, current))
        statement = " ".join(line.strip() for line in lines if not line.startswith("-- "))
        if statement and "alembic_version" not in statement:
            current.append(statement + ";")
    return [RevisionSql(revision, tuple(statements)) for revision, statements in sections]


def lint(revisions: list[RevisionSql]) -> list[Finding]:
    """Findings for the operations that break the running version, in revision order."""
    if not revisions:
        return []
    with tempfile.TemporaryDirectory(prefix="migration-lint-") as directory:
        files = {}
        for revision in revisions:
            path = Path(directory) / f"{revision.revision}.sql"
            path.write_text("\n".join(revision.statements) + "\n")
            files[str(path)] = revision
        reports = _squawk(list(files))
    findings = []
    for report in reports:
        rule = BREAKING_RULES.get(report["rule_name"])
        if rule is None:
            continue
        revision = files[report["file"]]
        findings.append(
            Finding(
                revision.revision,
                report["rule_name"],
                rule.operation,
                revision.statements[report["line"]],
                rule.why,
                rule.safe_alternative,
            )
        )
    order = {r.revision: i for i, r in enumerate(revisions)}
    return sorted(set(findings), key=lambda f: (order[f.revision], f.statement, f.rule))


@dataclass(frozen=True)
class ProbedRevision:
    """One revision as targets/image_check.py rendered it offline in the image: its
    upgrade and downgrade SQL, or why it could not be rendered."""

    revision: str
    upgrade: RevisionSql | None
    upgrade_error: str | None
    downgrade: RevisionSql | None
    downgrade_error: str | None
    downgrade_raises: bool  # the downgrade raised NotImplementedError: it is one-way

    @property
    def irreversible(self) -> str | None:
        """Why a rollback could not undo this revision, or None. A revision whose upgrade
        and downgrade both do nothing is reversible: there is nothing to undo."""
        if self.downgrade_raises:
            return f"its downgrade raises ({self.downgrade_error})"
        upgrade_changes = self.upgrade is None or self.upgrade.changes_schema
        if self.downgrade is not None and not self.downgrade.changes_schema and upgrade_changes:
            return "its downgrade changes nothing"
        return None

    @property
    def unrenderable(self) -> str | None:
        """Why its SQL cannot be read offline (a data migration using op.get_bind(), SQL
        loaded from files, ...), or None."""
        errors = [e for e in (self.upgrade_error, self.downgrade_error) if e]
        if not errors or (self.downgrade_raises and not self.upgrade_error):
            return None
        return "; ".join(errors)


PROBE_MARKER = MARKER


class UnknownRevision(Exception):
    """The probe's lower revision is not one of the image's revisions."""


def parse_probe(output: str) -> list[ProbedRevision]:
    """The revisions the probe printed, oldest first (UnknownRevision if it said so)."""
    revisions = []
    for line in output.splitlines():
        if not line.startswith(PROBE_MARKER):
            continue
        data = json.loads(line.removeprefix(PROBE_MARKER))
        if "probe" in data:
            continue
        if data.get("known") is False:
            raise UnknownRevision(data["error"])
        up, down = data["upgrade"], data["downgrade"]
        revisions.append(
            ProbedRevision(
                revision=data["revision"],
                upgrade=_sections(data["revision"], up.get("sql")),
                upgrade_error=up.get("error"),
                downgrade=_sections(data["revision"], down.get("sql")),
                downgrade_error=down.get("error"),
                downgrade_raises=down.get("kind") == "NotImplementedError",
            )
        )
    return revisions


def _sections(revision: str, sql: str | None) -> RevisionSql | None:
    if sql is None:
        return None
    rendered = [r for r in split_revisions(sql) if r.revision == revision]
    return rendered[0] if rendered else RevisionSql(revision, ())


def _squawk(paths: list[str]) -> list[dict]:
    result = subprocess.run(
        [_squawk_executable(), "--reporter", "json", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        raise StepFailed(
            f"squawk could not lint the rendered migrations (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[:500]}"
        ) from None


def _squawk_executable() -> str:
    beside_python = Path(sys.executable).parent / "squawk"
    found = shutil.which("squawk") or (str(beside_python) if beside_python.exists() else None)
    if found is None:
        raise ConfigurationError(
            f"the migration linter is missing on this runner: pip install {SQUAWK_PACKAGE}"
        )
    return found
