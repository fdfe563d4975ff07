"""Prefect blocks: where configuration and credentials live (never in flow parameters)."""

from blocks.environment import ReleaseEnvironment, load_environment

__all__ = ["ReleaseEnvironment", "load_environment"]
