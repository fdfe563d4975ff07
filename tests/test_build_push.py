import subprocess
import uuid
from dataclasses import replace

import pytest
from prefect_docker import DockerRegistryCredentials

from blocks.application import ROLES, Build
from blocks.environment import load_environment
from targets.build import BuildPlan, BuiltImage, build_images, source_id
from targets.errors import AuthenticationError, ConfigurationError, TransientError
from tasks.build import build
from tasks.push import push
from tests.backend import TEST_REPOSITORY, TEST_REPOSITORY_PATH, backend_context
from tests.releases import settled_task_runs

pytestmark = pytest.mark.docker


def creds(registry, password=None, address=None):
    return DockerRegistryCredentials(
        username=registry.username,
        password=password or registry.password,
        registry_url=address or registry.address,
    )


def build_api(source: str, version: str, ref: str | None = None) -> BuiltImage:
    """The build task on the default application spec: the API role's image."""
    return build(Build(source=source, ref=ref), TEST_REPOSITORY, version=version)["api"]


def test_build_then_push_serves_the_same_digest(engine, registry, tmp_path):
    context = backend_context(tmp_path)
    built = build_api(str(context), version=f"bp-{uuid.uuid4().hex[:6]}")

    image = engine.images.get(built.reference)
    assert image.id == built.image_id
    assert image.labels["org.opencontainers.image.version"] == built.version

    pinned = push(built.reference, creds(registry))
    repository, digest = pinned.split("@")
    assert repository == TEST_REPOSITORY
    assert registry.manifest_digest(TEST_REPOSITORY_PATH, built.version) == digest

    # Pushing again sends nothing and answers with the same digest.
    assert push(built.reference, creds(registry)) == pinned


def test_build_from_git_url_and_ref_labels_the_commit(engine, tmp_path):
    repo = backend_context(tmp_path / "git")
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "backend"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (repo / "later.txt").write_text("a later commit must not be built")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "later"], check=True)

    built = build_api(f"file://{repo}", version="from-git", ref=commit)

    labels = engine.images.get(built.reference).labels
    assert labels["org.opencontainers.image.revision"] == commit
    assert built.source_revision == commit


def test_wrong_password_is_refused_and_nothing_is_pushed(registry, tmp_path):
    tag = f"wrongpw-{uuid.uuid4().hex[:6]}"
    built = build_api(str(backend_context(tmp_path)), version=tag)

    state = push(built.reference, creds(registry, password="not-the-password"), return_state=True)

    assert state.is_failed()
    with pytest.raises(AuthenticationError, match="refused the credentials") as info:
        state.result()
    assert "not-the-password" not in str(info.value)
    assert _run_count(state) == 1  # refused credentials are not retried
    assert registry.manifest_digest(TEST_REPOSITORY_PATH, tag) is None


def test_unreachable_registry_is_retried_then_fails_clearly(engine, registry, tmp_path):
    built = build_api(str(backend_context(tmp_path)), version="unreachable")
    engine.images.get(built.reference).tag("127.0.0.1:5999/tests/backend", "unreachable")

    state = push(
        "127.0.0.1:5999/tests/backend:unreachable",
        creds(registry, address="127.0.0.1:5999"),
        return_state=True,
    )

    assert state.is_failed()
    with pytest.raises(TransientError, match="127.0.0.1:5999"):
        state.result()
    assert _run_count(state) == 4  # first try + 3 retries with backoff


@pytest.mark.parametrize("reference", ["127.0.0.1:5000/Tests/Backend:v1", "tests/backend:-x"])
def test_malformed_image_reference_is_refused(registry, reference):
    with pytest.raises(ConfigurationError, match="invalid image reference"):
        push(reference, creds(registry))


def test_nonexistent_build_context_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        build_api(str(tmp_path / "nope"), version="x")


def test_missing_environment_block_names_the_fix():
    with pytest.raises(ConfigurationError, match="unknown environment 'nowhere'.*README"):
        load_environment("nowhere")


def _run_count(state) -> int:
    return settled_task_runs([state.state_details.task_run_id])[0].run_count


def test_an_image_built_from_the_same_sources_is_not_built_again(tmp_path):
    context = backend_context(tmp_path)
    plan = BuildPlan(
        context=context,
        dockerfile=context / "Dockerfile",
        repository=TEST_REPOSITORY,
        version=f"same-{uuid.uuid4().hex[:6]}",
        stages=dict.fromkeys(ROLES),
        sources=source_id(context, context / "Dockerfile"),
    )
    first = build_images(plan, lambda _: None)["api"]
    said: list[str] = []

    again = build_images(plan, said.append)["api"]

    assert again.image_id == first.image_id
    assert said == [
        f"{first.reference} is already built from these sources "
        f"({first.image_id[:19]}): not rebuilt"
    ]
    (context / "app" / "changed.py").write_text("changed = True\n")
    changed = replace(plan, sources=source_id(context, context / "Dockerfile"))
    assert build_images(changed, lambda _: None)["api"].image_id != first.image_id


@pytest.mark.appspec
def test_a_push_never_moves_an_existing_tag_to_another_image(engine, registry, build_backend):
    first, second = build_backend("m-v3"), build_backend("m-v2", head="0002")
    path = f"{TEST_REPOSITORY_PATH}-tags-{uuid.uuid4().hex[:6]}"
    reference = f"{TEST_REPOSITORY}-tags-{path.rsplit('-', 1)[1]}:v1"
    engine.images.get(first).tag(reference)
    pinned = push(reference, creds(registry))
    digest = pinned.split("@")[1]
    engine.images.get(second).tag(reference)  # the same tag, another image
    try:
        with pytest.raises(ConfigurationError, match=f"already holds {digest} in the registry"):
            push(reference, creds(registry))
        assert registry.manifest_digest(path, "v1") == digest  # not moved

        # A version derived from the same sources: the registry's image is the release.
        assert push(reference, creds(registry), same_sources=True) == pinned
        assert registry.manifest_digest(path, "v1") == digest
    finally:
        engine.images.remove(reference)
