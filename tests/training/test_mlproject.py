"""`mlflow run . -e generate` then `mlflow run . -e train`, as written, against the real server.

Both run in subprocesses with a DATA_DIR of their own: MLflow builds the python_env.yaml
environment (a pinned uv) and runs the entry point's `uv run --frozen retail ...` command. The
test then reads back what the run left in the tracking server and the registry.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from training_world import tracking_at

pytestmark = [pytest.mark.services, pytest.mark.spark]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "tests-mlproject"


def _mlflow_run(entry_point: str, params: dict[str, object], env: dict[str, str]) -> str:
    """Run ``mlflow run . -e entry_point`` and return the run id it reports."""
    argv = [str(Path(sys.executable).parent / "mlflow"), "run", ".", "-e", entry_point,
            "--experiment-name", EXPERIMENT]  # fmt: skip
    for key, value in params.items():
        argv += ["-P", f"{key}={value}"]
    done = subprocess.run(
        argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    found = re.search(r"=== Run \(ID '([0-9a-f]+)'\) succeeded ===", output)
    assert found, output[-4000:]
    return found.group(1)


def test_mlproject_declares_typed_entry_points_with_defaults():
    spec = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
    assert spec["python_env"] == "python_env.yaml"
    assert {"train", "generate", "batch", "promote"} <= set(spec["entry_points"])
    train = spec["entry_points"]["train"]["parameters"]
    for name in ("max_evals", "folds", "horizon", "start", "end"):
        assert "default" in train[name] and train[name]["type"] in ("int", "string")
    for entry in spec["entry_points"].values():
        assert entry["command"].startswith("uv run --frozen retail ")


@pytest.mark.timeout(900)  # a full `mlflow run`: its own environment, Spark and 6 trials
def test_mlflow_run_train_registers_both_models(tmp_path, tracking_server):
    import mlflow

    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "MLFLOW_TRACKING_URI": tracking_server,
           "SPARK_MASTER": "local[2]"}  # fmt: skip
    # The demo's world on fixed days: the history then does not change with the day CI runs (the
    # world of 2026-08-10..2026-12-07 has a stock model that loses to the moving average).
    world = {"days": 120, "seed": 7, "scale": 1.0, "start_date": "2026-08-09"}
    _mlflow_run("generate", world, env)
    run_id = _mlflow_run(
        "train",
        {"max_evals": 3, "folds": 2, "horizon": 14, "max_trees": 40, "max_depth": 8},
        env,
    )
    with tracking_at(tracking_server):
        client = mlflow.MlflowClient()
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.project.entryPoint"] == "train"
        assert run.data.params["max_evals"] == "3" and run.data.params["horizon"] == "14"
        metrics = run.data.metrics
        for name in ("demand_forecaster", "stock_optimizer"):
            assert metrics[f"{name}/holdout_rmse"] < metrics[f"{name}/moving_average_rmse"]
            assert f"{name}/oracle_rmse" in metrics and f"{name}/coverage_90" in metrics
            version = client.get_model_version_by_alias(name, "challenger")
            assert version.run_id == run_id
            assert version.tags["code_version"] != "unknown"
            artifacts = {a.path for a in client.list_artifacts(run_id, name)}
            assert f"{name}/feature_importance.png" in artifacts
        trials = client.search_runs(
            [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'"
        )
        assert sorted(t.data.tags["model_name"] for t in trials) == [
            *["demand_forecaster"] * 3,  # one nested run per Hyperopt trial (max_evals)
            *["stock_optimizer"] * 3,
        ]
        assert all("rmse" in t.data.metrics for t in trials)
        assert "data_snapshot.json" in {a.path for a in client.list_artifacts(run_id)}


def test_training_under_mlflow_run_with_a_local_store_says_where_the_models_go():
    from training.cli import local_registry_warning

    local = "sqlite:////work/mlflow.db"  # `mlflow run` without MLFLOW_TRACKING_URI in the shell
    warning = local_registry_warning(local, {"MLFLOW_RUN_ID": "abc"})
    assert warning is not None
    assert local in warning
    assert "MLFLOW_TRACKING_URI=http://localhost:5000 mlflow run . -e train" in warning
    assert local_registry_warning("http://localhost:5000", {"MLFLOW_RUN_ID": "abc"}) is None
    assert local_registry_warning(local, {}) is None  # `retail train` pointed there on purpose
