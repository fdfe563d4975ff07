"""The Celery worker: `celery -A rhesis.backend.worker worker`; broker in PostgreSQL."""

from celery import Celery

from rhesis.backend.settings import database_url, require_secrets

require_secrets()
app = Celery("rhesis", broker="sqla+" + database_url(), backend="db+" + database_url())
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
