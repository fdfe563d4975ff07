"""Roll an image out, verified: what a release and a restore both end with.

    deploy the API                 (the previous one stays restorable)
      + scale the workers          (concurrently, from the start)
    verify the API                 (as soon as it is deployed, while workers start)
    verify the workers
    promote                        (the previous API is retired only now)

Both compensations are registered before the first of these changes anything.
"""

from flows.saga import Saga
from ledger.record import Compensation
from tasks.deploy import deploy_api, promote_api
from tasks.scale import scale_workers
from tasks.verify import verify_api, verify_workers


def roll_out(saga: Saga, image: str, version: str, workers: int) -> None:
    env, target = saga.env, saga.target
    saga.register(Compensation.API, Compensation.WORKERS)
    scaling = saga.submit("scale-workers", scale_workers, target, image, version, workers)
    try:
        saga.step("deploy-api", deploy_api, target, image, version)
        saga.step("verify-api", verify_api, env, target.candidate_url(), version)
    finally:
        scaling.wait()  # a rollback must not race a scaling still under way
    scaling.result()
    if workers:
        saga.step("verify-workers", verify_workers, env, target, image, workers)
    saga.step("promote-api", promote_api, target)
