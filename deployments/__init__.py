"""How the flows are served and triggered (see prefect.yaml)."""
