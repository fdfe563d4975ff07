import pytest

from targets.errors import ConfigurationError
from targets.images import parse_image_reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "text, registry, repository, tag, digest",
    [
        ("backend", None, "backend", None, None),
        ("team/backend:1.2", None, "team/backend", "1.2", None),
        ("127.0.0.1:5000/rhesis/backend:v2", "127.0.0.1:5000", "rhesis/backend", "v2", None),
        (
            f"europe-west1-docker.pkg.dev/p/r/img@{DIGEST}",
            "europe-west1-docker.pkg.dev",
            "p/r/img",
            None,
            DIGEST,
        ),
        (f"localhost/app:t@{DIGEST}", "localhost", "app", "t", DIGEST),
    ],
)
def test_parses_and_renders_references(text, registry, repository, tag, digest):
    ref = parse_image_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert str(ref) == text


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ("Team/Backend:1", "lowercase"),
        ("team/backend:-bad", "bad tag"),
        ("team/backend@sha256:xyz", "digest"),
        ("reg istry/app", "spaces"),
        ("127.0.0.1:5000/app//x", "lowercase components"),
    ],
)
def test_malformed_references_say_what_is_wrong(text, problem):
    with pytest.raises(ConfigurationError, match=problem) as info:
        parse_image_reference(text)
    assert "expected e.g." in str(info.value)
