"""`retail stream status`: the streaming queries' recent activity, read from ``stream_progress``
on the embedded store."""

from __future__ import annotations

import datetime as dt
import uuid

import pandas as pd
from typer.testing import CliRunner

from streaming.activity import query_activity, quiet_note
from streaming.cli import stream_app


def progress(job: str, query: str, batch_id: int, at: dt.datetime, rows: int) -> dict:
    return {
        "job": job,
        "query_name": query,
        "batch_id": batch_id,
        "batch_time": at,
        "input_rows": rows,
        "input_rows_per_second": 0.0,
        "processed_rows_per_second": 0.0,
        "batch_duration_ms": 100,
        "lag_messages": 0 if rows else 7,
        "watermark": at - dt.timedelta(minutes=10),
        "late_rows": 0,
    }


def record_two_queries(store, job: str, now: dt.datetime) -> None:
    """``quiet``: 500 events 40 minutes ago, then a batch without any 10 s ago; ``busy``: 200
    events 7 minutes ago and 300 one minute ago."""
    minutes = dt.timedelta(minutes=1)
    rows = [
        progress(job, "quiet", 0, now - 40 * minutes, 500),
        progress(job, "quiet", 1, now - dt.timedelta(seconds=10), 0),
        progress(job, "busy", 0, now - 7 * minutes, 200),
        progress(job, "busy", 1, now - minutes, 300),
    ]
    frame = pd.DataFrame(rows)
    for column in ("batch_time", "watermark"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    store.insert_df("stream_progress", frame)


def test_a_query_without_events_for_a_while_is_reported_quiet(store) -> None:
    job, now = f"job-{uuid.uuid4().hex[:6]}", dt.datetime.now(dt.UTC).replace(microsecond=0)
    record_two_queries(store, job, now)

    activity = query_activity(store, now).set_index("query_name")
    rows = activity[activity["job"] == job]
    assert rows.loc["quiet", "note"] == "no events for 40 min"
    assert rows.loc["quiet", "recent_events"] == 0
    assert rows.loc["quiet", "lag_messages"] == 7  # of its last batch
    assert rows.loc["busy", "note"] == ""
    assert rows.loc["busy", "recent_events"] == 300  # the batch 7 minutes ago is older
    last = pd.Timestamp(rows.loc["quiet", "last_batch"]).to_pydatetime()
    assert last == now - dt.timedelta(seconds=10)


def test_quiet_notes_count_minutes_then_hours() -> None:
    now = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
    assert quiet_note(now - dt.timedelta(minutes=4, seconds=59), now) == ""
    assert quiet_note(now - dt.timedelta(minutes=5), now) == "no events for 5 min"
    assert quiet_note(now - dt.timedelta(hours=3, minutes=20), now) == "no events for 3 h"
    assert quiet_note(None, now) == "no events in the last day"


def test_the_status_command_prints_each_query_and_its_note(store, monkeypatch) -> None:
    job, now = f"job-{uuid.uuid4().hex[:6]}", dt.datetime.now(dt.UTC).replace(microsecond=0)
    record_two_queries(store, job, now)
    monkeypatch.setenv("COLUMNS", "250")  # one line per row

    result = CliRunner().invoke(stream_app, ["status"])

    assert result.exit_code == 0, result.output
    lines = {line.split()[3]: line for line in result.output.splitlines() if job in line}
    assert set(lines) == {"quiet", "busy"}
    assert "no events for 40 min" in lines["quiet"]
    assert "no events" not in lines["busy"]
