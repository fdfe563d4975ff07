"""Where a run comes from: what started it and where it shows in the UI."""

from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL

# The entry flows, by what starts them (flows/entry.py).
STARTED_BY = {
    "nightly-staging": "schedule",
    "release-from-ui": "ui",
    "release-pushed-image": "event",
}


def run_id() -> str | None:
    return str(flow_run.id) if flow_run.id else None


def run_link() -> str | None:
    """Where the flow run shows in the UI (the API's address when no UI URL is set)."""
    if flow_run.id is None:
        return None
    link = flow_run.ui_url
    if link is None or link.startswith("None"):
        base = str(PREFECT_API_URL.value() or "").removesuffix("/api")
        link = f"{base}/runs/flow-run/{flow_run.id}"
    return link


def started_by() -> str:
    """What started this run: the entry flow at the root of it, a deployment run from the
    UI or `prefect deployment run`, or a direct Python call."""
    root_id = flow_run.root_flow_run_id
    with get_client(sync_client=True) as client:
        root = client.read_flow_run(root_id)
        flow_name = client.read_flow(root.flow_id).name
    if flow_name in STARTED_BY:
        return STARTED_BY[flow_name]
    if root.auto_scheduled:
        return "schedule"
    if root.deployment_id:
        return f"deployment run ({root.created_by.display_value if root.created_by else 'api'})"
    return "python"
