"""A sibling package the backend imports: the reason its build context is the repo root."""

NAME = "rhesis-sdk"
