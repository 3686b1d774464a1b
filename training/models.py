"""The two Spark ML pipelines: indexers and encoders for the attributes, an assembler, a tree
model, and a last stage that turns the tree's relative answer back into units.

``demand_forecaster`` (RandomForestRegressor) predicts the units a store sells of a product on a
day; ``stock_optimizer`` (GBTRegressor) predicts the units it sells over the product's
replenishment lead time, from which the reorder point and safety stock follow.

Demand is multiplicative (a series' level times weekday, promotion and holiday effects), and a
small history has few rows per series. So the trees learn the ratio of the label to the series'
regular level (``units_regular_mean_28d``, promotion days left out, or its lead-time multiple), weighted by the squared level so that the
squared error they minimise is the squared error in units, and the final ``SQLTransformer``
multiplies the ratio back: every series shares what is learnt about weekdays and promotions. The
pipeline's ``prediction`` column is in units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hyperopt import hp
from pyspark.ml import Pipeline
from pyspark.ml.feature import OneHotEncoder, SQLTransformer, StringIndexer, VectorAssembler
from pyspark.ml.regression import GBTRegressor, RandomForestRegressor
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from training.features import (
    CATEGORICAL_FEATURES,
    DEMAND_LABEL,
    DEMAND_NUMERIC_FEATURES,
    LEVEL_OFFSET,
    STOCK_LABEL,
    STOCK_NUMERIC_FEATURES,
)

DEMAND_FORECASTER = "demand_forecaster"
STOCK_OPTIMIZER = "stock_optimizer"
MODEL_NAMES = (DEMAND_FORECASTER, STOCK_OPTIMIZER)
SUBSET_STRATEGIES = ["onethird", "sqrt", "0.5", "all"]
TARGET_RATIO = "target_ratio"
TARGET_WEIGHT = "target_weight"
RATIO_PREDICTION = "ratio_prediction"


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model predicts, from which columns, and which rows may judge it."""

    name: str
    label: str
    numeric_features: list[str]
    label_end_column: str
    level_column: str

    @property
    def input_columns(self) -> list[str]:
        return [*CATEGORICAL_FEATURES, *self.numeric_features]


MODEL_SPECS = {
    DEMAND_FORECASTER: ModelSpec(
        DEMAND_FORECASTER, DEMAND_LABEL, DEMAND_NUMERIC_FEATURES, "date", "units_regular_mean_28d"
    ),
    STOCK_OPTIMIZER: ModelSpec(
        STOCK_OPTIMIZER,
        STOCK_LABEL,
        STOCK_NUMERIC_FEATURES,
        "lead_time_end_date",
        "naive_lead_time_demand",
    ),
}


def model_spec(name: str) -> ModelSpec:
    """The spec of a registered model name; a clear error for an unknown one."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}"
        ) from None


def add_training_target(frame: DataFrame, name: str) -> DataFrame:
    """Add the trees' label (label / level) and weight (level squared) for model ``name``."""
    spec = model_spec(name)
    level = F.col(spec.level_column) + F.lit(LEVEL_OFFSET)
    return frame.withColumn(TARGET_RATIO, F.col(spec.label) / level).withColumn(
        TARGET_WEIGHT, level * level
    )


def build_pipeline(name: str, params: dict[str, Any], seed: int = 42) -> Pipeline:
    """The unfitted pipeline of model ``name`` with hyperparameters ``params``."""
    spec = model_spec(name)
    indexed = [f"{c}_index" for c in CATEGORICAL_FEATURES]
    encoded = [f"{c}_onehot" for c in CATEGORICAL_FEATURES]
    stages: list[Any] = [
        StringIndexer(inputCols=CATEGORICAL_FEATURES, outputCols=indexed, handleInvalid="keep"),
        OneHotEncoder(inputCols=indexed, outputCols=encoded, handleInvalid="keep"),
        VectorAssembler(
            inputCols=[*spec.numeric_features, *encoded], outputCol="features", handleInvalid="keep"
        ),
    ]
    learner = {
        "featuresCol": "features",
        "labelCol": TARGET_RATIO,
        "weightCol": TARGET_WEIGHT,
        "predictionCol": RATIO_PREDICTION,
        "seed": seed,
    }
    if name == DEMAND_FORECASTER:
        stages.append(
            RandomForestRegressor(
                **learner,
                numTrees=int(params["num_trees"]),
                maxDepth=int(params["max_depth"]),
                minInstancesPerNode=int(params["min_instances_per_node"]),
                subsamplingRate=float(params["subsampling_rate"]),
                featureSubsetStrategy=str(params["feature_subset_strategy"]),
            )
        )
    else:
        stages.append(
            GBTRegressor(
                **learner,
                maxIter=int(params["max_iter"]),
                maxDepth=int(params["max_depth"]),
                stepSize=float(params["step_size"]),
                subsamplingRate=float(params["subsampling_rate"]),
                minInstancesPerNode=int(params["min_instances_per_node"]),
            )
        )
    in_units = f"GREATEST({RATIO_PREDICTION}, 0.0) * ({spec.level_column} + {LEVEL_OFFSET})"
    stages.append(SQLTransformer(statement=f"SELECT *, {in_units} AS prediction FROM __THIS__"))  # noqa: S608
    return Pipeline(stages=stages)


def learner_stage(fitted_pipeline: Any) -> Any:
    """The fitted tree model inside a fitted pipeline."""
    return next(s for s in fitted_pipeline.stages if hasattr(s, "featureImportances"))


def feature_names(scored: DataFrame) -> list[str]:
    """The names of the assembled feature vector's slots (from its ML attribute metadata)."""
    attributes = scored.schema["features"].metadata["ml_attr"]["attrs"]
    slots = sorted((a["idx"], a["name"]) for group in attributes.values() for a in group)
    return [name for _, name in slots]


def search_space(name: str, max_trees: int = 100, max_depth: int = 12) -> dict[str, Any]:
    """Hyperopt's search space for model ``name``, bounded by the tree budget."""
    if name == DEMAND_FORECASTER:
        return {
            "num_trees": hp.quniform("num_trees", *_bounds(max(5, max_trees // 4), max_trees), 5),
            "max_depth": hp.quniform("max_depth", *_bounds(6, max_depth), 1),
            "min_instances_per_node": hp.quniform("min_instances_per_node", 1, 12, 1),
            "subsampling_rate": hp.uniform("subsampling_rate", 0.6, 1.0),
            "feature_subset_strategy": hp.choice("feature_subset_strategy", SUBSET_STRATEGIES),
        }
    model_spec(name)
    gbt_depth = min(max_depth, 5)
    return {
        "max_iter": hp.quniform("max_iter", *_bounds(max(5, max_trees // 4), max_trees), 5),
        "max_depth": hp.quniform("max_depth", *_bounds(2, gbt_depth), 1),
        "step_size": hp.loguniform("step_size", -3.5, -1.0),
        "subsampling_rate": hp.uniform("subsampling_rate", 0.6, 1.0),
        "min_instances_per_node": hp.quniform("min_instances_per_node", 5, 40, 5),
    }


def _bounds(low: int, high: int) -> tuple[int, int]:
    """(low, high) with low < high, as Hyperopt requires, keeping ``high``."""
    return min(low, high - 1), high


def starting_point(name: str, max_trees: int = 100, max_depth: int = 12) -> dict[str, Any]:
    """A sound first trial (in Hyperopt's encoding: choices by index) for TPE to improve on."""
    trees = max(5, 5 * round(max_trees / 5))
    if name == DEMAND_FORECASTER:
        return {
            "num_trees": trees,
            "max_depth": max_depth,
            "min_instances_per_node": 5,
            "subsampling_rate": 0.8,
            "feature_subset_strategy": SUBSET_STRATEGIES.index("onethird"),
        }
    model_spec(name)
    return {
        "max_iter": trees,
        "max_depth": min(max_depth, 3),
        "step_size": 0.1,
        "subsampling_rate": 0.8,
        "min_instances_per_node": 20,
    }
