"""The environments a release may go to, and which pushed images go where.

`Environment` is the choice the UI form offers (the server refuses any other value); each
name is a Release Environment block of the same name. Add an environment here, create its
block, then run `python -m deployments.setup` and `prefect deploy --all` again.

`PUSH_ROUTES` maps `registry/repository:tag` patterns (shell-style, `*` matches anything)
to the environment a pushed image is released to; the first match wins. The event bridge's
`--route PATTERN=ENVIRONMENT` options replace them.
"""

from fnmatch import fnmatchcase
from typing import Literal, get_args

Environment = Literal["staging", "production"]
ENVIRONMENTS: tuple[str, ...] = get_args(Environment)

PUSH_ROUTES: tuple[tuple[str, str], ...] = (
    ("*/rhesis/backend:v*", "production"),
    ("*/rhesis/backend:main-*", "staging"),
)


def release_slot(environment: str) -> str:
    """The global concurrency limit (limit 1) every release to `environment` holds."""
    return f"release-{environment}"


def route(image: str, routes: tuple[tuple[str, str], ...] = PUSH_ROUTES) -> str | None:
    """The environment `image` (`registry/repository:tag`) is released to, or None."""
    return next((env for pattern, env in routes if fnmatchcase(image, pattern)), None)


def parse_route(text: str) -> tuple[str, str]:
    """`PATTERN=ENVIRONMENT` -> (pattern, environment); ValueError naming the problem."""
    pattern, sep, environment = text.rpartition("=")
    if not sep or not pattern:
        raise ValueError(f"route {text!r} must be PATTERN=ENVIRONMENT, e.g. '*/app:v*=production'")
    if environment not in ENVIRONMENTS:
        raise ValueError(
            f"route {text!r} names environment {environment!r}, which is not one of "
            f"{', '.join(ENVIRONMENTS)} (deployments/environments.py)"
        )
    return pattern, environment
