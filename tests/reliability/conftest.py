"""Fixtures of the reliability suite: the chaos stack (running services, the session's Spark, a
folder for the scenarios' own stores, and known secrets that every job subprocess receives, so
the logs can be scanned for them) and the tiny sizes the tests run the scenarios with."""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr

from benchmarks.chaos import Sizes, Stack, stop_leftover_jobs


@pytest.fixture(scope="session")
def known_secrets() -> dict[str, str]:
    """A ClickHouse password and an API token nobody could log by accident."""
    return {
        "CLICKHOUSE_PASSWORD": f"chpw-{uuid.uuid4().hex}",
        "API_TOKEN": f"apitok-{uuid.uuid4().hex}",
    }


@pytest.fixture(scope="session")
def chaos_stack(services, spark, tmp_path_factory, known_secrets) -> Stack:
    """The services, the one SparkSession and a folder of the suite's own; the settings carry the
    known secrets (the embedded store ignores the password; job subprocesses get both)."""
    settings = services.model_copy(
        update={
            "clickhouse_password": SecretStr(known_secrets["CLICKHOUSE_PASSWORD"]),
            "api_token": SecretStr(known_secrets["API_TOKEN"]),
        }
    )
    return Stack(settings, spark, tmp_path_factory.mktemp("chaos"))


@pytest.fixture(scope="session")
def sizes() -> Sizes:
    return Sizes.tiny()


@pytest.fixture(autouse=True)
def no_leftover_jobs():
    """A scenario that fails half-way leaves no job process running into the next tests."""
    yield
    stop_leftover_jobs()
