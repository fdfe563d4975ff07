"""Configuration from the environment. The backend refuses to start without its secrets."""

import os

REQUIRED_SECRETS = ("AUTH0_CLIENT_SECRET", "AUTH0_SECRET_KEY", "JWT_SECRET_KEY")
FAIL_HEALTH = os.environ.get("BACKEND_FAIL_HEALTH", "") not in ("", "0")


def require_secrets() -> None:
    missing = [name for name in REQUIRED_SECRETS if not os.environ.get(name)]
    if missing:
        raise SystemExit(f"refusing to start: {', '.join(missing)} not set")


def database_url() -> str:
    url = os.environ.get("SQLALCHEMY_DATABASE_URL", "")
    if not url:
        raise RuntimeError("SQLALCHEMY_DATABASE_URL is not set")
    return url.replace("postgresql://", "postgresql+psycopg://", 1)
