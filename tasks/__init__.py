"""Prefect tasks, one module per release step, each a few lines over the platform layer
(targets/) with retries that fit the step. Steps that change the environment talk to the
run's Target adapter; build and push talk to the Docker engine and the registry."""
