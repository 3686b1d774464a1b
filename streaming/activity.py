"""What the streaming queries did lately, from ``stream_progress``: for `retail stream status`.

A running job records a row per micro-batch. Its last batch with events says whether events
still arrive: a feed that stops altogether (every till, or the producer) closes no window, so
the sales job cannot flag it, but the status shows it (and the running job logs a warning,
``ProgressRecorder.warn_quiet``). Light on purpose: no Spark import.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from common.store import Store

QUIET_AFTER = dt.timedelta(minutes=5)  # a query without events this long is reported quiet
RECENT = dt.timedelta(minutes=5)  # the span of the "events lately" count
SHOWN_SINCE = dt.timedelta(days=1)  # queries without a batch in this span are not listed

ACTIVITY_COLUMNS = [
    "job",
    "query_name",
    "last_batch",
    "last_events",
    "recent_events",
    "lag_messages",
    "watermark",
]
TABLE_EXISTS_SQL = (
    "SELECT count() FROM system.tables "
    "WHERE database = currentDatabase() AND name = 'stream_progress'"
)
QUERY_ACTIVITY_SQL = """
SELECT
    job,
    query_name,
    max(batch_time) AS last_batch,
    maxIfOrNull(batch_time, input_rows > 0) AS last_events,
    sumIf(input_rows, batch_time >= {recent_since:DateTime64(3, 'UTC')}) AS recent_events,
    argMax(lag_messages, batch_time) AS lag_messages,
    argMax(watermark, batch_time) AS watermark
FROM stream_progress FINAL
WHERE batch_time >= {shown_since:DateTime64(3, 'UTC')}
GROUP BY job, query_name
ORDER BY last_batch DESC, job, query_name
"""


def query_activity(store: Store, now: dt.datetime) -> pd.DataFrame:
    """One row per query with a batch in the last day: its last batch, its last batch with
    events, the events of the last 5 minutes, its Kafka lag and watermark, and a ``note`` when no
    event has come for ``QUIET_AFTER`` or more."""
    if not store.scalar(TABLE_EXISTS_SQL):  # a store no job has run against yet
        return pd.DataFrame(columns=[*ACTIVITY_COLUMNS, "note"])
    utc = now.astimezone(dt.UTC).replace(tzinfo=None)  # query parameters take naive UTC
    frame = store.query_df(
        QUERY_ACTIVITY_SQL, {"recent_since": utc - RECENT, "shown_since": utc - SHOWN_SINCE}
    )
    frame["note"] = [quiet_note(last, now) for last in frame["last_events"]]
    return frame


def quiet_note(last_events: dt.datetime | None, now: dt.datetime) -> str:
    """``no events for N min`` when the last events are ``QUIET_AFTER`` old or older, else ''."""
    if last_events is None or pd.isna(last_events):
        return "no events in the last day"
    quiet = now - pd.Timestamp(last_events).to_pydatetime()
    if quiet < QUIET_AFTER:
        return ""
    minutes = int(quiet.total_seconds() // 60)
    return f"no events for {minutes} min" if minutes < 120 else f"no events for {minutes // 60} h"
