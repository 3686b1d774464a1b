"""Log a fitted pipeline to MLflow, register it, and mark the new version as the challenger.

Aliases, not stages: ``challenger`` for the newest trained version, ``champion`` for the version
in production (moved only by :mod:`training.promote`). Every version carries tags with its data
range, holdout window, metrics and the code version (git sha) it was trained from, and its
MLmodel metadata carries the conformal quantiles, so anyone who loads ``models:/name@alias`` can
build intervals and safety stock without looking up the training run.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common.models import model_info, model_uri

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
_INSTRUMENTATION_LOGGER = "org.apache.spark.ml.util.Instrumentation"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str


def code_version() -> str:
    """The git commit the code runs from (``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def register_version(
    model: Any,
    name: str,
    input_example: pd.DataFrame,
    output_example: pd.Series,
    tags: dict[str, str],
    metadata: dict[str, Any],
) -> RegisteredVersion:
    """Log ``model`` under the active run, register it as ``name``, alias it ``challenger``."""
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(input_example, output_example)
    with _quiet_spark_ml_errors():
        info = mlflow.spark.log_model(
            model,
            name,
            signature=signature,
            input_example=input_example,
            registered_model_name=name,
            metadata=metadata,
        )
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, CHALLENGER, version)
    log.info("registered %s version %s as %s", name, version, CHALLENGER)
    return RegisteredVersion(name, version, info.run_id, model_uri(name, version))


@contextmanager
def _quiet_spark_ml_errors() -> Iterator[None]:
    """Silence Spark ML's error log while MLflow tries a direct save to the artifact store.

    With a tracking server the artifact URI is ``mlflow-artifacts:/``, which Hadoop cannot write;
    MLflow expects that failure and falls back to saving locally and uploading, but Spark logs a
    long stack trace first.
    """
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is None:
        yield
        return
    log4j = context._jvm.org.apache.logging.log4j
    logger = log4j.LogManager.getLogger(_INSTRUMENTATION_LOGGER)
    previous = logger.getLevel()
    log4j.core.config.Configurator.setLevel(_INSTRUMENTATION_LOGGER, log4j.Level.OFF)
    try:
        yield
    finally:
        log4j.core.config.Configurator.setLevel(_INSTRUMENTATION_LOGGER, previous)


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version behind ``name@alias``, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def model_metadata(model_uri: str) -> dict[str, Any]:
    """The metadata logged with a model (conformal quantiles, feature columns, holdout window)."""
    return dict(model_info(model_uri).metadata or {})
