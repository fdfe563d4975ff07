"""The flows' one error contract (flows/errors.py), where a failure comes before any
platform is reached: ReleaseFailed, saying its cause once and that nothing changed."""

import pytest
from prefect.blocks.system import Secret

from blocks.environment import ReleaseEnvironment
from flows.entry import release_from_ui
from flows.errors import ReleaseFailed
from flows.saga import Saga
from ledger.record import ReleaseRecord
from targets.errors import ConfigurationError


def said_once(failure: ReleaseFailed, cause: str) -> None:
    message = str(failure)
    assert message.count(cause) == 1, message
    assert message.lower().count("nothing was changed") == 1, message
    assert not failure.changed


def test_the_form_refuses_an_image_and_a_git_ref_together_as_a_failed_release():
    with pytest.raises(ReleaseFailed, match="release to staging failed") as info:
        release_from_ui.fn(environment="staging", image="rhesis/backend:v2", git_ref="main")

    assert isinstance(info.value.cause, ConfigurationError)
    said_once(info.value, "not both")


def test_a_rollback_whose_ledger_cannot_be_read_is_a_failed_rollback():
    unreachable = ReleaseEnvironment(
        environment="errors-test",
        image_repository="127.0.0.1:5000/rhesis/backend",
        database_url=Secret(value="postgresql://u:p@127.0.0.1:1/db"),
    )
    with pytest.raises(ReleaseFailed, match="rollback of errors-test failed") as info:
        Saga.resume(unreachable, ReleaseRecord(environment="errors-test"))

    assert info.value.cause is not None
    said_once(info.value, str(info.value.cause))
