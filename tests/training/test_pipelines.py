"""Search spaces: Hyperopt accepts every tree budget the CLI allows, starting point included."""

from __future__ import annotations

import numpy as np
import pytest
from hyperopt import Trials, fmin, tpe

from training.models import MODEL_NAMES, search_space, starting_point


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("max_trees", "max_depth"), [(2, 2), (5, 3), (20, 6), (100, 12)])
def test_search_space_accepts_any_tree_budget(name, max_trees, max_depth):
    seen = []

    def objective(params):
        seen.append(params)
        return 1.0

    fmin(
        objective,
        search_space(name, max_trees=max_trees, max_depth=max_depth),
        algo=tpe.suggest,
        max_evals=3,
        trials=Trials(),
        rstate=np.random.default_rng(0),
        points_to_evaluate=[starting_point(name, max_trees=max_trees, max_depth=max_depth)],
        show_progressbar=False,
    )
    assert len(seen) == 3
    assert all(p["max_depth"] <= max_depth for p in seen)
