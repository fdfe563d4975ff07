"""The flow modules load without the Cloud Run Admin API client (google-cloud-run's run_v2):
`blocks.cloud_run` imports it only when a Cloud Run target connects. (Secret Manager, boto3
and botocore still load: prefect-gcp and prefect-aws import them, and the settings blocks
need those for their field types.)"""

import subprocess
import sys
from pathlib import Path

DEFERRED = ("google.cloud.run_v2", "targets.cloud_run")

SCRIPT = f"""
import sys
import flows.release, flows.rollback
deferred = {DEFERRED!r}
print(sorted(m for m in sys.modules if any(m == d or m.startswith(d + ".") for d in deferred)))
"""


def test_the_flow_modules_load_without_the_cloud_run_client():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )

    assert result.stdout.strip() == "[]", result.stdout
