"""Roll an image out, verified: what a release and a restore both end with.

    deploy the API                 (the previous one stays restorable)
      + scale the workers          (concurrently, from the start)
    verify the API                 (as soon as it is deployed, while workers start)
      + verify the workers         (as soon as they are started)
    promote                        (the previous API is retired only now)

Both compensations are registered before the first of these changes anything.
"""

from flows.saga import Saga
from ledger.record import Compensation
from tasks.deploy import deploy_api, promote_api
from tasks.scale import scale_workers
from tasks.verify import verify_api, verify_workers


def roll_out(saga: Saga, images: dict[str, str], version: str, workers: int) -> None:
    """`images`: the pinned image of each role (api, worker)."""
    env, target, api, worker = saga.env, saga.target, images["api"], images["worker"]
    saga.register(Compensation.API, Compensation.WORKERS)
    scaling = saga.submit("scale-workers", scale_workers, target, worker, version, workers)
    started = [scaling]
    try:
        saga.step("deploy-api", deploy_api, target, api, version)
        url = target.candidate_url()
        started.append(
            saga.submit("verify-api", verify_api, env, target, url, version=version, image=api)
        )
        scaling.result()
        if workers:
            started.append(
                saga.submit("verify-workers", verify_workers, env, target, worker, workers)
            )
        for verification in started[1:]:
            verification.result()
    finally:
        for step in started:
            step.wait()  # a rollback must not race a step still under way
    saga.step("promote-api", promote_api, target)
