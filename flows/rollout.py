"""Roll an image out, verified: what a release and a restore both end with.

    deploy the API                 (the previous one stays restorable)
      + scale the workers          (concurrently, from the start)
    verify the API                 (as soon as it is deployed, while workers start)
    verify the workers
    promote                        (the previous API is retired only now)

Both compensations are registered before the first of these changes anything.
"""

from blocks.environment import ReleaseEnvironment, connect_target
from flows.record import API, WORKERS, ReleaseRecord
from flows.summary import Timeline
from tasks.deploy import deploy_api, promote_api
from tasks.scale import scale_workers
from tasks.verify import verify_api, verify_workers


def roll_out(
    env: ReleaseEnvironment,
    record: ReleaseRecord,
    timeline: Timeline,
    image: str,
    version: str,
    workers: int,
) -> None:
    record.register(API, WORKERS)
    workers_run = timeline.submit("scale-workers", scale_workers, env, image, version, workers)
    try:
        timeline.run("deploy-api", deploy_api, env, image, version)
        timeline.run("verify-api", verify_api, env, connect_target(env).candidate_url(), version)
    finally:
        workers_run.wait()  # a rollback must not race a scaling still under way
    workers_run.result()
    if workers:
        timeline.run("verify-workers", verify_workers, env, image, workers)
    timeline.run("promote-api", promote_api, env)
