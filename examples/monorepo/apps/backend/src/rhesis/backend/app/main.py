"""The API: /health (no version in it) and /projects."""

from functools import lru_cache

from fastapi import FastAPI, Response
from pydantic import BaseModel
from rhesis_sdk import NAME
from sqlalchemy import create_engine, text

from rhesis.backend.settings import FAIL_HEALTH, database_url, require_secrets

require_secrets()
app = FastAPI(title=f"monorepo backend ({NAME})")


@lru_cache(maxsize=1)
def engine():
    return create_engine(database_url(), pool_pre_ping=True)


class ProjectIn(BaseModel):
    name: str


@app.get("/health")
def health(response: Response) -> dict:
    with engine().connect() as conn:
        conn.execute(text("select 1"))
    response.status_code = 503 if FAIL_HEALTH else 200
    return {"status": "unhealthy" if FAIL_HEALTH else "ok"}


@app.get("/projects")
def projects() -> list[dict]:
    with engine().connect() as conn:
        rows = conn.execute(text("select id, name from projects order by id"))
        return [{"id": r.id, "name": r.name} for r in rows]


@app.post("/projects", status_code=201)
def create_project(project: ProjectIn) -> dict:
    with engine().begin() as conn:
        new_id = conn.execute(
            text("insert into projects (name) values (:name) returning id"), {"name": project.name}
        ).scalar_one()
    return {"id": new_id, "name": project.name}
