"""Example backend shaped like the Rhesis backend (API, Celery worker, Alembic)."""
