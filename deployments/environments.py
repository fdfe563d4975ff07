"""The environments a release may go to, and which pushed images go where.

The environments are the Release Environment blocks on the Prefect server: add one by
saving its block (README, "Configure an environment"), then run `python -m
deployments.setup` (its release slot) and `prefect deploy --all` (the forms offer it).

`Environment` is the type of a form's environment parameter: a block name, which the
deployment's parameter schema restricts to the blocks that exist when `prefect deploy`
runs, so the server refuses any other value before a run exists. `ENVIRONMENTS` is that
list, read from the server each time it is used.

A push route maps a `registry/repository:tag` pattern (shell-style, `*` matches anything)
to the environment a pushed image is released to. The event bridge takes its routes from
its `--route PATTERN=ENVIRONMENT` options (the first match wins) or, without any, from the
`push_routes` of the Release Environment blocks (a push two environments claim is refused).
"""

from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import Annotated, Any

from prefect.settings import PREFECT_API_URL
from pydantic import Field, GetJsonSchemaHandler
from pydantic_core import CoreSchema

from blocks.environment import known_environments

EnvironmentName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class _OfferedEnvironments:
    """JSON schema of an environment parameter: one of the blocks on the server now. A
    process that names no server (PREFECT_API_URL unset: importing the flows, say) gets
    the schema without the list rather than starting a temporary server to ask; the
    schema that counts is the one `prefect deploy` sends, and it names the server."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        schema = handler(core_schema)
        return {**schema, "enum": known_environments()} if PREFECT_API_URL.value() else schema


Environment = Annotated[EnvironmentName, _OfferedEnvironments()]


class _Environments:
    """The Release Environment blocks on the server, read on each use."""

    def __iter__(self) -> Iterator[str]:
        return iter(known_environments())

    def __contains__(self, name: object) -> bool:
        return name in known_environments()


ENVIRONMENTS = _Environments()


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
            f"{', '.join(ENVIRONMENTS) or 'none'} (the Release Environment blocks on the server)"
        )
    return pattern, environment
