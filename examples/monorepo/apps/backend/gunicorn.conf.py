"""gunicorn: one Uvicorn worker on 8080, always (the app has no port variable)."""

bind = "0.0.0.0:8080"
workers = 1
worker_class = "uvicorn.workers.UvicornWorker"
