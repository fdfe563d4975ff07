"""Versions and build output, without a Docker engine: what a build would be called and
what its log would say."""

import subprocess

from targets.build import content_version, log_lines, source_id


def version(root) -> str:
    return content_version(source_id(root, root / "Dockerfile"))


def tree(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def git(root, *args: str) -> str:
    base = ["git", "-C", str(root), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    return subprocess.run([*base, *args], capture_output=True, text=True, check=True).stdout


def test_the_version_follows_what_the_build_context_sends(tmp_path):
    root = tree(
        tmp_path,
        {"Dockerfile": "FROM scratch\n", "app.py": "a = 1\n", ".dockerignore": "notes/\n"},
    )
    first = version(root)
    tree(root, {"notes/todo.txt": "ignored by .dockerignore", ".git/FETCH_HEAD": "fetched"})

    assert version(root) == first  # nothing the build sends changed
    assert first.startswith("src-")
    tree(root, {"app.py": "a = 2\n"})
    assert version(root) != first


def test_a_clean_git_checkout_is_its_commit_and_a_dirty_one_its_files(tmp_path):
    root = tree(tmp_path, {"Dockerfile": "FROM scratch\n", "app.py": "a = 1\n"})
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "first")
    commit = git(root, "rev-parse", "HEAD").strip()

    assert version(root) == f"git-{commit[:12]}"
    tree(root, {"app.py": "a = 2\n"})
    assert version(root).startswith("src-")


def test_build_output_is_logged_line_by_line_without_colour_codes():
    chunk = "\x1b[1;32m#5 [2/4] RUN uv sync\x1b[0m\r\x1b[2K Resolved 12 packages\r\n\n"

    assert log_lines(chunk) == ["#5 [2/4] RUN uv sync", " Resolved 12 packages"]
