"""How long the content version of a large monorepo takes, against sending its build context.

A tree of 5,000 source files (2 kB each, in 50 packages) with a Dockerfile in
`apps/backend/`, a `.git` of 2,000 objects and an ignored `node_modules/` of 2,000 files.
The flow's `content_digest` (`.dockerignore` honoured, `.git` never read) is timed against
`tar -c` of the same context into /dev/null, the least a `docker build` of it does. Both
read the same files from a warm page cache, alternating, `rounds` times each.
"""

import os
import subprocess
import tempfile
import time
from pathlib import Path

from targets.build import content_digest

FILES = 5000


def monorepo(root: Path) -> Path:
    """Write the tree; return its Dockerfile."""
    dockerfile = root / "apps" / "backend" / "Dockerfile"
    dockerfile.parent.mkdir(parents=True)
    dockerfile.write_text("FROM python:3.11-slim\nCOPY . /src\n")
    (root / ".dockerignore").write_text("node_modules\n**/__pycache__\n")
    for i in range(FILES):
        path = root / f"pkg{i % 50}" / f"mod{i // 50}" / f"f{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(2000))
    for folder, count in ((".git/objects", 2000), ("node_modules/dep", 2000)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            (root / folder / f"o{i}").write_bytes(os.urandom(2000))
    return dockerfile


def measure(rounds: int = 3) -> dict[str, list[float]]:
    """Seconds per round: `content_version` (the flow) and `tar_context` (the baseline)."""
    times: dict[str, list[float]] = {"content_version": [], "tar_context": []}
    with tempfile.TemporaryDirectory(prefix="bench-monorepo-") as folder:
        root = Path(folder)
        dockerfile = monorepo(root)
        tar = ["tar", "-C", folder, "--exclude=./.git", "--exclude=./node_modules", "-cf", "-", "."]
        for _ in range(rounds):
            started = time.perf_counter()
            content_digest(root, dockerfile)
            times["content_version"].append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run(tar, stdout=subprocess.DEVNULL, check=True)
            times["tar_context"].append(time.perf_counter() - started)
    return times
