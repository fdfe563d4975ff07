"""Celery app; the worker runs as `celery -A app.worker worker --loglevel=info`.

Broker and result backend both live in PostgreSQL, so no extra service is needed.
"""

from celery import Celery

from app.settings import VERSION, broker_url, database_url

celery_app = Celery(
    "backend",
    broker=broker_url(),
    backend="db+" + database_url(),
)
celery_app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
app = celery_app


@celery_app.task(name="backend.version")
def version() -> str:
    """Answer with the version of the worker that ran it (used to check a release)."""
    return VERSION
