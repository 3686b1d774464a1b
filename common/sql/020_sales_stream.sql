-- Sales streaming job: 1-minute pane partials, 5-minute sliding window metrics, anomalies, demand
-- scores and the job's anomaly horizon. Raw events go to the core table sales_events.
--
-- sales_panes holds one partial row per micro-batch and 1-minute pane (per store and 'ALL'): sums
-- of revenue (in millionths, so sums are exact and independent of how events fall into batches),
-- units and line items, and the distinct transaction and customer ids seen. Panes combine into
-- windows with sum() and uniqExactArray(): exact, whatever the batching.
CREATE TABLE IF NOT EXISTS sales_panes (
    pane_start DateTime('UTC'),
    store_id LowCardinality(String),
    revenue_micros Int64,
    units Int64,
    line_items Int64,
    transaction_ids Array(String),
    customer_ids Array(String),
    written_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = MergeTree
PARTITION BY toYYYYMM(pane_start)
ORDER BY (pane_start, store_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Until 2026-12-07 panes summed whole cents (revenue_cents), so an amount below a cent was lost;
-- the panes written then read as millionths.
ALTER TABLE sales_panes ADD COLUMN IF NOT EXISTS revenue_micros Int64 DEFAULT revenue_cents * 10000;

-- 5-minute windows sliding by 1 minute, per store and overall (store_id 'ALL'). A window touched
-- again by a later batch is recomputed from its panes and its new row replaces the earlier one:
-- the job writes every version to sales_metrics_versions, and sales_metrics is the latest of each
-- window, so a plain SELECT needs no FINAL. (Until 2026-12-07 the versions table was named
-- sales_metrics; `retail migrate` renames it, keeping its rows.)
CREATE TABLE IF NOT EXISTS sales_metrics_versions (
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    store_id LowCardinality(String),
    revenue Float64,
    transactions UInt64,
    customers UInt64,
    units Int64,
    line_items Int64,
    avg_basket Float64,
    units_per_transaction Float64,
    computed_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, store_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE VIEW IF NOT EXISTS sales_metrics AS
SELECT window_start, window_end, store_id, revenue, transactions, customers, units, line_items,
       avg_basket, units_per_transaction, computed_at
FROM sales_metrics_versions FINAL;

-- Closed store windows whose revenue or units deviate from the robust rolling baseline (median and
-- MAD of the preceding windows) and, when a champion model exists, from its expectation. A silence
-- is written again as it grows (its window_end moves on); the job writes every version to
-- sales_anomalies_versions, and sales_anomalies is the latest of each, so a plain SELECT needs no
-- FINAL. (Until 2026-12-07 the versions table was named sales_anomalies; `retail migrate`
-- renames it, keeping its rows.)
CREATE TABLE IF NOT EXISTS sales_anomalies_versions (
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    store_id LowCardinality(String),
    metric LowCardinality(String),
    observed Float64,
    expected Float64,
    baseline_mad Float64,
    score Float64,
    model_expected Nullable(Float64),
    model_name Nullable(String),
    model_version Nullable(String),
    direction LowCardinality(String),
    severity LowCardinality(String),
    reason String,
    detected_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(detected_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, store_id, metric)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE VIEW IF NOT EXISTS sales_anomalies AS
SELECT window_start, window_end, store_id, metric, observed, expected, baseline_mad, score,
       model_expected, model_name, model_version, direction, severity, reason, detected_at
FROM sales_anomalies_versions FINAL;

-- Expected units per store, product and day from the champion, scored in-stream when the pair sells.
-- One row per model version: the current forecast is the latest scored_at (argMax) of a key and day.
CREATE TABLE IF NOT EXISTS demand_scores (
    store_id LowCardinality(String),
    product_id LowCardinality(String),
    forecast_date Date,
    predicted_units Float64,
    model_name LowCardinality(String),
    model_version String,
    query_name LowCardinality(String),
    batch_id Int64,
    scored_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMM(forecast_date)
ORDER BY (forecast_date, store_id, product_id, model_name, model_version)
SETTINGS non_replicated_deduplication_window = 10000;

-- How far (in event time) the sales job has judged closed windows for anomalies, per query.
CREATE TABLE IF NOT EXISTS sales_anomaly_horizon (
    query_name LowCardinality(String),
    judged_until DateTime('UTC'),
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY query_name;
