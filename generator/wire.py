"""The wire format: events as compact JSON, one per Kafka record, in the contract's field order.

Each event is pre-serialised in two parts around its ``event_time`` value, so the stream can stamp
the time at the moment of sending with two byte concatenations.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

_SALES_TAIL = (
    '","transaction_id":"%s","store_id":"%s","customer_id":%s,"product_id":"%s","category":%s,'
    '"quantity":%d,"unit_price":%r,"discount":%r,"total_amount":%r,"payment_method":%s,'
    '"channel":%s,"on_promotion":%s}'
)
_INVENTORY_TAIL = (
    '","store_id":"%s","product_id":"%s","event_type":"%s","quantity_change":%d,'
    '"stock_level":%d,"reorder_point":%d,"lead_time_days":%r,"unit_cost":%r}'
)


def iso_utc(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and 'Z': 2026-11-24T10:15:00.123Z."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def iso_utc_array(ms: np.ndarray) -> np.ndarray:
    """Vectorised :func:`iso_utc`."""
    text = np.datetime_as_string(np.asarray(ms, dtype="datetime64[ms]"), unit="ms")
    return np.char.add(text, "Z")


def _json_literals(values: np.ndarray) -> list[str]:
    """Each value as a JSON literal (strings quoted and escaped, None as null)."""
    cache: dict[object, str] = {}
    out = []
    for value in values.tolist():
        literal = cache.get(value)
        if literal is None:
            literal = cache[value] = json.dumps(value)
        out.append(literal)
    return out


def _heads(event_ids: pd.Series) -> list[bytes]:
    return [f'{{"event_id":"{e}","event_time":"'.encode() for e in event_ids.tolist()]


def sales_payloads(frame: pd.DataFrame) -> tuple[list[bytes], list[bytes]]:
    """(head, tail) of each sales line item; the value is ``head + event_time + tail``."""
    customer = _json_literals(frame["customer_id"].to_numpy())
    category = _json_literals(frame["category"].to_numpy())
    payment = _json_literals(frame["payment_method"].to_numpy())
    channel = _json_literals(frame["channel"].to_numpy())
    promotion = np.where(frame["on_promotion"].to_numpy(), "true", "false").tolist()
    tails = [
        (_SALES_TAIL % fields).encode()
        for fields in zip(
            frame["transaction_id"].tolist(),
            frame["store_id"].tolist(),
            customer,
            frame["product_id"].tolist(),
            category,
            frame["quantity"].tolist(),
            frame["unit_price"].tolist(),
            frame["discount"].tolist(),
            frame["total_amount"].tolist(),
            payment,
            channel,
            promotion,
            strict=True,
        )
    ]
    return _heads(frame["event_id"]), tails


def inventory_payloads(frame: pd.DataFrame) -> tuple[list[bytes], list[bytes]]:
    """(head, tail) of each inventory event; the value is ``head + event_time + tail``."""
    tails = [
        (_INVENTORY_TAIL % fields).encode()
        for fields in zip(
            frame["store_id"].tolist(),
            frame["product_id"].tolist(),
            frame["event_type"].tolist(),
            frame["quantity_change"].tolist(),
            frame["stock_level"].tolist(),
            frame["reorder_point"].tolist(),
            frame["lead_time_days"].tolist(),
            frame["unit_cost"].tolist(),
            strict=True,
        )
    ]
    return _heads(frame["event_id"]), tails
