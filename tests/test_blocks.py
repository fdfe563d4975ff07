import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from pydantic import ValidationError

from blocks.environment import ReleaseEnvironment, container_env, load_environment


def make(**overrides) -> ReleaseEnvironment:
    fields = dict(
        environment="blocks-test",
        image_repository="127.0.0.1:5000/rhesis/backend",
        database_url=Secret(value="postgresql://u:topsecret@127.0.0.1:5432/db"),
    )
    return ReleaseEnvironment(**{**fields, **overrides})


def test_environment_saves_and_loads_by_name_with_the_secret_masked():
    ReleaseEnvironment.register_type_and_schema()
    make(worker_count=3).save("blocks-test", overwrite=True)

    loaded = load_environment("blocks-test")

    assert loaded.worker_count == 3
    assert loaded.database_url_value().endswith("@127.0.0.1:5432/db")
    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(
            "blocks-test", block_type_slug="release-environment", include_secrets=False
        )
    assert "database_url" in doc.data
    assert "topsecret" not in str(doc.data)


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("environment", "Staging!", "lowercase letters"),
        ("image_repository", "127.0.0.1:5000/rhesis/backend:v1", "must not carry a tag"),
        ("image_repository", "Rhesis/Backend", "invalid image reference"),
        ("health_path", "health", "must start with '/'"),
        ("worker_count", -1, "greater than or equal to 0"),
        ("database_url_variables", ["SQLALCHEMY-URL"], "is not an environment variable name"),
        ("database_url_parts", {"DB_USER": "username"}, "'user', 'password', 'host'"),
        ("env", {"DATABASE_URL": "postgresql://u:p@h/db"}, "remove it from `env`"),
        ("database_url_variables", [], "name at least one variable"),
    ],
)
def test_bad_environment_settings_are_refused_with_the_reason(field, value, problem):
    with pytest.raises((ValidationError, ValueError), match=problem):
        make(**{field: value})


def test_the_database_url_reaches_the_app_under_every_name_it_reads():
    env = make(
        database_url_variables=["DATABASE_URL", "SQLALCHEMY_DATABASE_URL"],
        database_url_parts={"DB_USER": "user", "DB_PASS": "password", "DB_NAME": "database"},
        env={"LOG_LEVEL": "info"},
    )

    assert container_env(env) == {
        "LOG_LEVEL": "info",
        "DATABASE_URL": "postgresql://u:topsecret@127.0.0.1:5432/db",
        "SQLALCHEMY_DATABASE_URL": "postgresql://u:topsecret@127.0.0.1:5432/db",
        "DB_USER": "u",
        "DB_PASS": "topsecret",
        "DB_NAME": "db",
    }
