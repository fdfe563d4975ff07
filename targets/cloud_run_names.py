"""Cloud Run's naming rules: names as revisions and traffic tags allow, and the room a
traffic tag needs beside the service name. No Google client here, so the Cloud Run settings
block validates with it without loading the Admin API client (`targets.cloud_run`).
"""

import re

from targets.errors import ConfigurationError

# Cloud Run serves a tag at https://TAG---SERVICE-HASH-REGION.a.run.app: the tag and the
# service name together may have at most 46 characters, and a tag at least 3.
TAG_AND_SERVICE_MAX = 46
TAG_MIN = 3
TAG_PREFIX = "v-"


def slug(text: str, limit: int) -> str:
    """Lowercase letters, digits and '-', as revision names and traffic tags allow."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "x"


def max_api_service_length() -> int:
    return TAG_AND_SERVICE_MAX - TAG_MIN


def candidate_tag(version: str, service: str) -> str:
    """The candidate revision's traffic tag: 'v-' and the version, as much of it as Cloud
    Run's limit leaves beside the service name (at most 28 characters of it)."""
    room = TAG_AND_SERVICE_MAX - len(service) - len(TAG_PREFIX)
    if room < TAG_MIN - len(TAG_PREFIX):
        raise ConfigurationError(tag_room_problem(service))
    return TAG_PREFIX + slug(version, min(28, room))


def tag_room_problem(service: str) -> str:
    return (
        f"Cloud Run service name {service!r} has {len(service)} characters: Cloud Run refuses "
        f"a traffic tag whose length plus the service name's exceeds {TAG_AND_SERVICE_MAX}, and "
        f"a tag under {TAG_MIN} characters, so the release's candidate tag cannot fit. Use an "
        f"API service of at most {max_api_service_length()} characters (api_service in the "
        "Cloud Run settings block)"
    )
