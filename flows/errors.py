"""The error contract of the flows, for callers: every release, plan, restore and rollback
that does not complete raises ReleaseFailed, saying once what failed, why, and what it
changed. `cause` is the underlying error, whose class says what kind of problem it was
(targets/errors.py: bad input, refused credentials, a transient fault, a failed step).
"""

from targets.errors import ReleaseError


class ReleaseFailed(ReleaseError):
    """A change of an environment (or a check of one) did not complete.

    Attributes: `step` the step that failed (None: before the first step), `cause` the
    error, `changed` whether anything had changed, `outcome` as the ledger records it
    ('failed', 'rolled back', 'rollback failed'), `restored` what the rollback put back.
    """

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        cause: BaseException | None = None,
        changed: bool = False,
        outcome: str = "failed",
        restored: list[str] | None = None,
    ):
        super().__init__(message)
        self.step, self.cause, self.changed = step, cause, changed
        self.outcome, self.restored = outcome, list(restored or [])

    @classmethod
    def refused(cls, what: str, cause: BaseException, step: str | None = None) -> "ReleaseFailed":
        """Nothing had changed when `cause` stopped it."""
        where = f" at step '{step}'" if step else ""
        return cls(f"{what} failed{where}: {cause}. Nothing was changed.", step=step, cause=cause)


class RollbackFailed(ReleaseError):
    """The compensations could not put the environment back; the message says what state
    it is in and how to finish the rollback."""
