import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from pydantic import ValidationError

from blocks.application import ApplicationSpec, Database
from blocks.environment import ReleaseEnvironment, container_env, load_environment
from targets.errors import ConfigurationError


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
        ("application", {"health": {"path": "health"}}, "must start with '/'"),
        ("worker_count", -1, "greater than or equal to 0"),
        (
            "application",
            {"database": {"url_variables": ["SQLALCHEMY-URL"]}},
            "is not an environment variable name",
        ),
        (
            "application",
            {"database": {"url_parts": {"DB_USER": "username"}}},
            "'user', 'password', 'host'",
        ),
        ("env", {"DATABASE_URL": "postgresql://u:p@h/db"}, "give each variable one source"),
        ("application", {"database": {"url_variables": []}}, "name at least one variable"),
        ("secrets", {"JWT_SECRET_KEY": "jwt"}, "must name a secret block"),
    ],
)
def test_bad_environment_settings_are_refused_with_the_reason(field, value, problem):
    with pytest.raises((ValidationError, ValueError), match=problem):
        make(**{field: value})


def test_the_database_url_reaches_the_app_under_every_name_it_reads():
    database = Database(
        url_variables=["DATABASE_URL", "SQLALCHEMY_DATABASE_URL"],
        url_parts={"DB_USER": "user", "DB_PASS": "password", "DB_NAME": "database"},
    )
    env = make(application=ApplicationSpec(database=database), env={"LOG_LEVEL": "info"})

    assert container_env(env) == {
        "LOG_LEVEL": "info",
        "DATABASE_URL": "postgresql://u:topsecret@127.0.0.1:5432/db",
        "SQLALCHEMY_DATABASE_URL": "postgresql://u:topsecret@127.0.0.1:5432/db",
        "DB_USER": "u",
        "DB_PASS": "topsecret",
        "DB_NAME": "db",
    }


def test_env_file_and_secret_blocks_fill_the_container_environment(tmp_path):
    Secret(value="jwt-value-from-block").save("blocks-test-jwt", overwrite=True)
    env_file = tmp_path / "backend.env"
    env_file.write_text("# the seed's --env-file\nLOG_LEVEL=debug\nWORKERS='3'\n")
    env = make(
        env_file=str(env_file),
        env={"LOG_LEVEL": "info"},
        secrets={"JWT_SECRET_KEY": "secret/blocks-test-jwt"},
    )

    values = container_env(env)

    assert values["LOG_LEVEL"] == "info"  # env wins over the file
    assert values["WORKERS"] == "3"
    assert values["JWT_SECRET_KEY"] == "jwt-value-from-block"


def test_a_missing_env_file_or_secret_block_names_the_fix(tmp_path):
    missing_file = make(env_file=str(tmp_path / "nowhere.env"))
    with pytest.raises(ConfigurationError, match="env_file .* does not exist"):
        container_env(missing_file)

    missing_block = make(secrets={"AUTH0_SECRET_KEY": "secret/nobody-made-this"})
    with pytest.raises(
        ConfigurationError, match="'secret/nobody-made-this' for .*AUTH0_SECRET_KEY"
    ):
        container_env(missing_block)
