"""The expectation suites of the daily gate: raw sales, raw inventory, daily volume, KPI output.

Every expectation carries ``meta["severity"]``: ``critical`` stops the day from being published,
``warning`` is reported and, for checks on single rows, sends the offending rows to quarantine.
Catalog ids and the freshness thresholds are suite parameters (``$PARAMETER``) bound at run time.
"""

from __future__ import annotations

from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe

from common.schemas import INVENTORY_EVENT_SCHEMA, INVENTORY_EVENT_TYPES, SALES_EVENT_SCHEMA

CRITICAL = "critical"
WARNING = "warning"

SALES_SUITE = "raw_sales"
INVENTORY_SUITE = "raw_inventory"
VOLUME_SUITE = "daily_volume"
KPI_SUITE = "daily_kpis"
# The gate numbers the rows of every frame it stages, so that failures point at rows.
ROW_ID = "row_id"

INTEGER_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
FLOAT_TYPES = ["float32", "float64"]

# A day's volume against the mean of the 7 days before it: below the floor the day is incomplete.
VOLUME_RATIO_FLOOR = 0.5
VOLUME_RATIO_CEILING = 3.0

KPI_COLUMNS = [
    "date",
    "level",
    "store_id",
    "category",
    "revenue",
    "units",
    "transactions",
    "avg_order_value",
    "unique_customers",
    "cogs",
    "gross_margin",
    "gross_margin_pct",
    "opening_stock_units",
    "received_units",
    "closing_stock_units",
    "sell_through",
    "stockout_days",
    "tracked_days",
    "stockout_rate",
    "inventory_value",
    "inventory_turnover",
    "days_of_supply",
    "forecast_units",
    "forecast_actual_units",
    "forecast_wape",
    "forecast_bias",
]
KPI_LEVELS = ["overall", "store", "category"]


def _meta(severity: str, check: str) -> dict[str, Any]:
    return {"severity": severity, "check": check}


def _param(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


def _not_null(columns: list[str]) -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_meta(WARNING, "not-null key"))
        for c in columns
    ]


def _types(integers: list[str], floats: list[str]) -> list[gxe.Expectation]:
    checks: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToBeInTypeList(
            column=c, type_list=INTEGER_TYPES, meta=_meta(CRITICAL, "schema")
        )
        for c in integers
    ]
    checks += [
        gxe.ExpectColumnValuesToBeInTypeList(
            column=c, type_list=FLOAT_TYPES, meta=_meta(CRITICAL, "schema")
        )
        for c in floats
    ]
    return checks


def _catalog_checks() -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnValuesToBeInSet(
            column="store_id",
            value_set=_param("store_ids"),
            meta=_meta(WARNING, "referential integrity"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="product_id",
            value_set=_param("product_ids"),
            meta=_meta(WARNING, "referential integrity"),
        ),
    ]


def sales_suite() -> gx.ExpectationSuite:
    """Raw sales line items of one day (``sales_events`` FINAL, empty keys read as null)."""
    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[f.name for f in SALES_EVENT_SCHEMA.fields],
            exact_match=False,
            meta=_meta(CRITICAL, "schema"),
        ),
        *_types(["quantity"], ["unit_price", "discount", "total_amount"]),
        *_not_null(["event_id", "event_time", "transaction_id", "store_id", "product_id"]),
        gxe.ExpectColumnValuesToBeUnique(column="event_id", meta=_meta(WARNING, "unique id")),
        gxe.ExpectColumnValuesToBeBetween(
            column="quantity", min_value=1, meta=_meta(WARNING, "value range")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="unit_price", min_value=0, strict_min=True, meta=_meta(WARNING, "value range")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="discount",
            min_value=0,
            max_value=1,
            strict_max=True,
            meta=_meta(WARNING, "value range"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="total_amount", min_value=0, meta=_meta(WARNING, "value range")
        ),
        *_catalog_checks(),
        gxe.ExpectColumnPairValuesToBeInSet(
            column_A="product_id",
            column_B="category",
            value_pairs_set=_param("product_categories"),
            ignore_row_if="either_value_is_missing",
            meta=_meta(WARNING, "referential integrity"),
        ),
    ]
    return gx.ExpectationSuite(name=SALES_SUITE, expectations=expectations)


def inventory_suite() -> gx.ExpectationSuite:
    """Raw stock movements of one day (``inventory_events`` FINAL, empty keys read as null)."""
    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[f.name for f in INVENTORY_EVENT_SCHEMA.fields],
            exact_match=False,
            meta=_meta(CRITICAL, "schema"),
        ),
        *_types(["quantity_change", "stock_level", "reorder_point"], ["unit_cost"]),
        *_not_null(["event_id", "event_time", "store_id", "product_id", "event_type"]),
        gxe.ExpectColumnValuesToBeUnique(column="event_id", meta=_meta(WARNING, "unique id")),
        gxe.ExpectColumnValuesToBeInSet(
            column="event_type",
            value_set=list(INVENTORY_EVENT_TYPES),
            meta=_meta(WARNING, "value range"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="stock_level", min_value=0, meta=_meta(WARNING, "value range")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="unit_cost", min_value=0, meta=_meta(WARNING, "value range")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="lead_time_days", min_value=0, max_value=365, meta=_meta(WARNING, "value range")
        ),
        *_catalog_checks(),
    ]
    return gx.ExpectationSuite(name=INVENTORY_SUITE, expectations=expectations)


def volume_parameters(holiday: bool) -> dict[str, float]:
    """The floors of a day's sales: none on a holiday, when stores may close or sell little."""
    if holiday:
        return {"sales_rows_min": 0, "sales_volume_floor": 0.0}
    return {"sales_rows_min": 1, "sales_volume_floor": VOLUME_RATIO_FLOOR}


def volume_suite() -> gx.ExpectationSuite:
    """One row per day: row counts against the trailing 7-day mean, and the newest event time."""
    expectations: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToBeBetween(
            column="sales_rows",
            min_value=_param("sales_rows_min"),
            meta=_meta(CRITICAL, "missing day"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="sales_volume_ratio",
            min_value=_param("sales_volume_floor"),
            meta=_meta(CRITICAL, "volume against trailing average"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="sales_volume_ratio",
            max_value=VOLUME_RATIO_CEILING,
            meta=_meta(WARNING, "volume against trailing average"),
        ),
        gxe.ExpectColumnMaxToBeBetween(
            column="latest_sales_event_time",
            min_value=_param("sales_fresh_after"),
            meta=_meta(CRITICAL, "freshness"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="inventory_rows", min_value=1, meta=_meta(WARNING, "missing day")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="inventory_volume_ratio",
            min_value=VOLUME_RATIO_FLOOR,
            max_value=VOLUME_RATIO_CEILING,
            meta=_meta(WARNING, "volume against trailing average"),
        ),
    ]
    return gx.ExpectationSuite(name=VOLUME_SUITE, expectations=expectations)


def kpi_suite() -> gx.ExpectationSuite:
    """The KPI rows of one day, checked before they are published."""

    def non_negative(column: str) -> gxe.Expectation:
        return gxe.ExpectColumnValuesToBeBetween(
            column=column, min_value=0, meta=_meta(CRITICAL, "value range")
        )

    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[ROW_ID, *KPI_COLUMNS], exact_match=True, meta=_meta(CRITICAL, "schema")
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=_meta(CRITICAL, "volume")),
        *[
            gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_meta(CRITICAL, "not-null key"))
            for c in ["date", "level", "store_id", "category", "revenue", "units", "transactions"]
        ],
        gxe.ExpectColumnValuesToBeInSet(
            column="level", value_set=KPI_LEVELS, meta=_meta(CRITICAL, "value range")
        ),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["level", "store_id", "category"], meta=_meta(CRITICAL, "unique key")
        ),
        *[
            non_negative(c)
            for c in ["revenue", "units", "transactions", "unique_customers", "cogs"]
            + ["inventory_value", "forecast_wape"]
        ],
        gxe.ExpectColumnValuesToBeBetween(
            column="gross_margin_pct", max_value=1, meta=_meta(CRITICAL, "value range")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="stockout_rate", min_value=0, max_value=1, meta=_meta(CRITICAL, "value range")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="sell_through", min_value=0, max_value=1, meta=_meta(WARNING, "value range")
        ),
    ]
    return gx.ExpectationSuite(name=KPI_SUITE, expectations=expectations)
