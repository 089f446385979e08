"""Shared pytest fixtures. The SeaweedFS S3 server fixture lives in tests/s3_fixtures.py."""

pytest_plugins = ["tests.s3_fixtures"]
