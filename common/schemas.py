"""The event contract: the fields of a sales and an inventory event, as Spark schemas.

This module is the source of truth for the wire format on the Kafka topics (JSON, one event per
record, key ``store_id|product_id``). The store's raw tables in ``common/sql/001_core.sql`` mirror it.
"""

from __future__ import annotations

from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

SALES_EVENT_SCHEMA = StructType(
    [
        StructField("event_id", StringType(), False),  # uuid, stable across re-sends
        StructField(
            "event_time", StringType(), False
        ),  # ISO-8601 UTC, e.g. 2026-11-24T10:15:00.123Z
        StructField("transaction_id", StringType(), False),  # groups the line items of one basket
        StructField("store_id", StringType(), False),
        StructField("customer_id", StringType(), True),  # null for anonymous customers
        StructField("product_id", StringType(), False),
        StructField("category", StringType(), False),
        StructField("quantity", IntegerType(), False),  # units, > 0
        StructField("unit_price", DoubleType(), False),  # list price, > 0
        StructField("discount", DoubleType(), False),  # fraction of the list price, 0 <= d < 1
        StructField("total_amount", DoubleType(), False),  # quantity * unit_price * (1 - discount)
        StructField("payment_method", StringType(), False),  # card, cash, mobile, gift_card
        StructField("channel", StringType(), False),  # store, online, click_and_collect
        StructField("on_promotion", BooleanType(), True),  # the product was on promotion
    ]
)

INVENTORY_EVENT_TYPES = ("sale", "restock", "adjustment", "shrinkage", "snapshot")
OVERALL = "ALL"  # the store_id of the rows over all stores (sales_metrics, anomalies)

INVENTORY_EVENT_SCHEMA = StructType(
    [
        StructField("event_id", StringType(), False),
        StructField("event_time", StringType(), False),
        StructField("store_id", StringType(), False),
        StructField("product_id", StringType(), False),
        StructField("event_type", StringType(), False),  # one of INVENTORY_EVENT_TYPES
        StructField("quantity_change", IntegerType(), False),  # signed change in units on hand
        StructField("stock_level", IntegerType(), False),  # units on hand after the event, >= 0
        StructField("reorder_point", IntegerType(), False),
        StructField("lead_time_days", DoubleType(), False),
        StructField("unit_cost", DoubleType(), False),
    ]
)


def required_fields(schema: StructType) -> list[str]:
    """The fields an event must carry (non-nullable in the contract)."""
    return [f.name for f in schema.fields if not f.nullable]


def event_key(store_id: str, product_id: str) -> bytes:
    """The Kafka record key: ``store_id|product_id``."""
    return f"{store_id}|{product_id}".encode()
