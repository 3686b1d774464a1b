"""Search spaces: Hyperopt accepts every tree budget the CLI allows, starting point included."""

from __future__ import annotations

import pytest
from hyperopt import STATUS_OK, space_eval

from training.models import MODEL_NAMES, search_space, starting_point
from training.tune import search


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("max_trees", "max_depth"), [(2, 2), (5, 3), (20, 6), (100, 12)])
@pytest.mark.parametrize("max_evals", [1, 3])
def test_the_search_tries_the_starting_point_first_and_any_tree_budget(
    name, max_trees, max_depth, max_evals
):
    seen = []

    def objective(params):
        seen.append(params)
        return {"loss": 1.0, "status": STATUS_OK}

    search(objective, name, max_evals, seed=0, max_trees=max_trees, max_depth=max_depth)

    assert len(seen) == max_evals
    space = search_space(name, max_trees=max_trees, max_depth=max_depth)
    assert seen[0] == space_eval(space, starting_point(name, max_trees, max_depth))
    assert all(p["max_depth"] <= max_depth for p in seen)


def test_the_forecast_plot_names_the_baseline_it_draws():
    import pandas as pd

    from training.plots import forecast_vs_actual_figure

    holdout = pd.DataFrame(
        {
            "date": pd.to_datetime(["2025-03-01", "2025-03-02"]),
            "lead_time_demand": [4.0, 6.0],
            "prediction": [5.0, 5.0],
            "baseline": [3.0, 7.0],
        }
    )
    figure = forecast_vs_actual_figure(holdout, "lead_time_demand", "stock", "moving average")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["actual", "model", "moving average"]
