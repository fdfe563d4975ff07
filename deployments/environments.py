"""The environments a release may go to, and which pushed images go where.

`Environment` is the choice the UI form offers (the server refuses any other value); each
name is a Release Environment block of the same name. Add an environment here, create its
block, then run `python -m deployments.setup` and `prefect deploy --all` again.

A push route maps a `registry/repository:tag` pattern (shell-style, `*` matches anything)
to the environment a pushed image is released to. The event bridge takes its routes from
its `--route PATTERN=ENVIRONMENT` options (the first match wins) or, without any, from the
`push_routes` of the Release Environment blocks (a push two environments claim is refused).
"""

from fnmatch import fnmatchcase
from typing import Literal, get_args

Environment = Literal["staging", "production"]
ENVIRONMENTS: tuple[str, ...] = get_args(Environment)


def release_slot(environment: str) -> str:
    """The global concurrency limit (limit 1) every release to `environment` holds."""
    return f"release-{environment}"


Routes = tuple[tuple[str, str], ...]  # (pattern, environment), in order


def route(image: str, routes: Routes) -> str | None:
    """The environment `image` (`registry/repository:tag`) is released to, or None."""
    return next(iter(matching_environments(image, routes)), None)


def matching_environments(image: str, routes: Routes) -> list[str]:
    """Every environment with a pattern matching `image`, in route order, each once."""
    matches = (env for pattern, env in routes if fnmatchcase(image, pattern))
    return list(dict.fromkeys(matches))


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
