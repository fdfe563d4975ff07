"""HTTP API: /health reports version and database reachability; /projects reads and writes."""

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from pydantic import BaseModel
from sqlalchemy import text

from app.db import engine, health_engine
from app.faults import crash_later_if_requested
from app.settings import FAIL_HEALTH, HEALTH_DELAY, VERSION


@asynccontextmanager
async def lifespan(_: FastAPI):
    crash_later_if_requested()
    yield


app = FastAPI(title="example backend", version=VERSION, lifespan=lifespan)


class ProjectIn(BaseModel):
    name: str


@app.get("/health")
def health(response: Response) -> dict:
    time.sleep(HEALTH_DELAY)
    try:
        with health_engine().connect() as conn:
            conn.execute(text("select 1"))
        database = True
    except Exception:
        database = False
    healthy = database and not FAIL_HEALTH
    response.status_code = 200 if healthy else 503
    response.headers["X-App-Version"] = VERSION  # for checks that read a header instead
    return {"status": "ok" if healthy else "unhealthy", "version": VERSION, "database": database}


@app.get("/projects")
def list_projects() -> list[dict]:
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
