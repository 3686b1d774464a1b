"""Rolling-origin (expanding-window) validation around Spark ML pipelines, and forecast metrics.

Spark's ``CrossValidator`` (even with ``foldCol``) trains each fold on all the other folds, future
ones included, which leaks the future into the past of a time series. So the folds are built
here: fold ``k`` trains on every row whose label is known before its validation block starts and
validates on the ``horizon`` days of that block; blocks follow each other and end where the final
holdout (the last ``horizon`` days) begins. ``CrossValidator`` is not used anywhere.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from training.data import TrainingDataError
from training.features import FEATURE_HISTORY_DAYS

MIN_TRAINING_DAYS = 14


@dataclass(frozen=True)
class Fold:
    """Train on labels known before ``validation_start``; validate on the block's days."""

    number: int
    train_start: dt.date
    validation_start: dt.date
    validation_end: dt.date


@dataclass(frozen=True)
class Plan:
    """The folds and the final holdout for one history window."""

    folds: list[Fold]
    holdout: Fold


def plan_folds(start: dt.date, end: dt.date, folds: int, horizon: int) -> Plan:
    """Folds of ``horizon`` days before a holdout of ``horizon`` days that ends on ``end``.

    The first FEATURE_HISTORY_DAYS days only feed lags (warm-up) and every fold keeps at least
    MIN_TRAINING_DAYS of training days; a window too short for that raises TrainingDataError
    saying how many days it has and needs.
    """
    if folds < 1 or horizon < 1:
        raise ValueError("folds and horizon must be at least 1")
    train_start = start + dt.timedelta(days=FEATURE_HISTORY_DAYS)
    needed = FEATURE_HISTORY_DAYS + MIN_TRAINING_DAYS + (folds + 1) * horizon
    have = (end - start).days + 1
    if have < needed:
        raise TrainingDataError(
            f"the history has {have} days ({start}..{end}) but {folds} folds of {horizon} days "
            f"plus a {horizon}-day holdout need at least {needed}: {FEATURE_HISTORY_DAYS} days of "
            f"warm-up for the lags and {MIN_TRAINING_DAYS} days of training; load more history "
            "or lower --folds/--horizon"
        )
    blocks = []
    for number in range(folds + 1):
        block_end = end - dt.timedelta(days=(folds - number) * horizon)
        block_start = block_end - dt.timedelta(days=horizon - 1)
        blocks.append(Fold(number, train_start, block_start, block_end))
    return Plan(folds=blocks[:-1], holdout=blocks[-1])


def split_fold(
    frame: DataFrame, fold: Fold, label: str, label_end: str
) -> tuple[DataFrame, DataFrame]:
    """(train, validation) rows of ``fold`` with a known label.

    A training row's label must be complete before the block starts (``label_end`` is the last
    day the label looks at: the day itself for daily demand, the end of the lead time for the
    stock model), so nothing from the validation block or later is learnt; and a validation
    row's label must end within the block, so that the last fold's labels do not read the
    holdout's sales, nor the holdout's the days after the window.
    """
    labelled = frame.where(F.col(label).isNotNull())
    train = labelled.where(
        (F.col("date") >= F.lit(fold.train_start))
        & (F.col(label_end) < F.lit(fold.validation_start))
    )
    validation = labelled.where(
        (F.col("date") >= F.lit(fold.validation_start))
        & (F.col(label_end) <= F.lit(fold.validation_end))
    )
    return train, validation
