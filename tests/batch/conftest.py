"""Fixtures of the batch tests. They run on a DATA_DIR of their own (their own embedded store,
GX project and reports), so the hand-made rows meet no other test's data and theirs do not reach
the batch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from batch_world import PRODUCTS, RUN_DAY, STORES, World

from common.settings import Settings
from common.store import Store, migrate, open_store


@pytest.fixture(scope="session")
def batch_settings(settings, tmp_path_factory) -> Settings:
    """The session's settings on a DATA_DIR of the batch tests' own."""
    return settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("batch-data")})


@pytest.fixture(scope="session")
def batch_store(batch_settings) -> Store:
    """A migrated embedded store holding the stores and products of the hand-made world."""
    the_store = open_store(batch_settings)
    migrate(the_store)
    the_store.insert_df("products", PRODUCTS)
    the_store.insert_df("stores", STORES)
    return the_store


@pytest.fixture(scope="session")
def make_world(batch_store) -> Callable[[str], World]:
    """A factory of worlds with their own id prefix."""
    return lambda prefix: World(batch_store, prefix)


@pytest.fixture(scope="session")
def clean_world(make_world) -> World:
    """History plus the clean run day, inserted once."""
    world = make_world("clean")
    world.history(RUN_DAY)
    world.clean_day(RUN_DAY)
    return world
