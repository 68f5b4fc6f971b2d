"""The AWS provider (work in progress)."""
