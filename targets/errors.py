"""Error classes shared by targets and tasks.

The class says how to react: a TransientError is worth retrying with backoff, anything
else fails at once. A ConfigurationError is bad input: it is raised before the first
mutation and its message names the problem and the fix.
"""


class ReleaseError(Exception):
    """Base for errors this tool raises on purpose (their messages are safe to show)."""


class ConfigurationError(ReleaseError):
    """Bad input: unknown environment, malformed reference, missing block, bad path."""


class TransientError(ReleaseError):
    """A failure that may pass: connection refused, timeout, 429/5xx from an API."""


class AuthenticationError(ReleaseError):
    """Credentials were refused. Retrying with the same credentials cannot help."""


class StepFailed(ReleaseError):
    """A step ran and failed for a reason that retrying will not change."""


class MigrationFailed(StepFailed):
    def __init__(self, message: str, *, before: str | None, after: str | None, output: str):
        super().__init__(message)
        self.before = before
        self.after = after
        self.output = output
