-- Daily batch area: aggregates kept on insert by materialized views, the published KPIs and
-- rankings, the data-quality gate's results and quarantine, and a log of batch runs.
-- A published table holds one run per date: the job inserts the new run's rows and then deletes
-- the date's rows of every other run (ReplacingMergeTree keeps FINAL reads right in between).
-- The view targets set non_replicated_deduplication_window: without it an insert replayed with the
-- same insert_deduplication_token is dropped from the source table but counted again by the view.

-- The daily sales grains keep the distinct transactions and customers as uniqExact states of
-- 64-bit hashes of the ids (cityHash64): half the bytes of the states of the id strings (128-bit
-- SipHash), which the KPIs read and merge at three levels. A count falls short only where two
-- different ids of one day and level share a hash: at a million ids, a chance of about 3e-8.
-- sales_daily (states of the strings, until 2026-12-07) is replaced by sales_daily_v2; the batch
-- job rebuilds the days it reads from the raw table (batch.views.repair_daily_views).
DROP VIEW IF EXISTS sales_daily_mv;
DROP TABLE IF EXISTS sales_daily;

CREATE TABLE IF NOT EXISTS sales_daily_v2 (
    sale_date Date,
    store_id LowCardinality(String),
    category LowCardinality(String),
    product_id LowCardinality(String),
    line_items SimpleAggregateFunction(sum, UInt64),
    units SimpleAggregateFunction(sum, Int64),
    revenue SimpleAggregateFunction(sum, Float64),
    transactions AggregateFunction(uniqExact, UInt64),
    customers AggregateFunction(uniqExact, Nullable(UInt64))
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(sale_date)
ORDER BY (sale_date, store_id, category, product_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sales_daily_v2_mv TO sales_daily_v2 AS
SELECT
    toDate(event_time) AS sale_date,
    store_id,
    category,
    product_id,
    count() AS line_items,
    sum(toInt64(quantity)) AS units,
    sum(total_amount) AS revenue,
    uniqExactState(cityHash64(transaction_id)) AS transactions,
    uniqExactState(cityHash64(customer_id)) AS customers
FROM sales_events
GROUP BY sale_date, store_id, category, product_id;

CREATE TABLE IF NOT EXISTS inventory_daily (
    movement_date Date,
    store_id LowCardinality(String),
    product_id LowCardinality(String),
    movements SimpleAggregateFunction(sum, UInt64),
    opening_units AggregateFunction(argMin, Int64, DateTime64(3, 'UTC')),
    closing_units AggregateFunction(argMax, Int64, DateTime64(3, 'UTC')),
    min_units SimpleAggregateFunction(min, Int64),
    received_units SimpleAggregateFunction(sum, Int64)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(movement_date)
ORDER BY (movement_date, store_id, product_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS inventory_daily_mv TO inventory_daily AS
SELECT
    toDate(event_time) AS movement_date,
    store_id,
    product_id,
    count() AS movements,
    argMinState(toInt64(stock_level) - quantity_change, event_time) AS opening_units,
    argMaxState(toInt64(stock_level), event_time) AS closing_units,
    min(least(toInt64(stock_level), toInt64(stock_level) - quantity_change)) AS min_units,
    sumIf(toInt64(quantity_change), event_type = 'restock') AS received_units
FROM inventory_events
GROUP BY movement_date, store_id, product_id;

CREATE TABLE IF NOT EXISTS daily_kpis (
    date Date,
    level LowCardinality(String),
    store_id LowCardinality(String),
    category LowCardinality(String),
    revenue Float64,
    units Int64,
    transactions Int64,
    avg_order_value Nullable(Float64),
    unique_customers Int64,
    cogs Float64,
    gross_margin Float64,
    gross_margin_pct Nullable(Float64),
    opening_stock_units Int64,
    received_units Int64,
    closing_stock_units Int64,
    sell_through Nullable(Float64),
    stockout_days Int64,
    tracked_days Int64,
    stockout_rate Nullable(Float64),
    inventory_value Float64,
    inventory_turnover Nullable(Float64),
    days_of_supply Nullable(Float64),
    forecast_units Nullable(Float64),
    forecast_actual_units Nullable(Float64),
    forecast_wape Nullable(Float64),
    forecast_bias Nullable(Float64),
    run_id String,
    published_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(published_at)
PARTITION BY toYYYYMM(date)
ORDER BY (date, level, store_id, category)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS product_rankings (
    date Date,
    store_id LowCardinality(String),
    metric LowCardinality(String),
    direction LowCardinality(String),
    rank UInt16,
    product_id LowCardinality(String),
    product_name String,
    category LowCardinality(String),
    value Float64,
    revenue Float64,
    units Int64,
    gross_margin Float64,
    revenue_7d Float64,
    revenue_prev_7d Float64,
    run_id String,
    published_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(published_at)
PARTITION BY toYYYYMM(date)
ORDER BY (date, store_id, metric, direction, rank)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS store_rankings (
    date Date,
    store_id LowCardinality(String),
    store_name String,
    region LowCardinality(String),
    rank UInt16,
    revenue Float64,
    gross_margin Float64,
    revenue_7d Float64,
    revenue_prev_7d Float64,
    wow_change Nullable(Float64),
    rank_prev_week Nullable(UInt16),
    rank_change Nullable(Int32),
    run_id String,
    published_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(published_at)
PARTITION BY toYYYYMM(date)
ORDER BY (date, store_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS data_quality_results (
    run_id String,
    checked_at DateTime64(3, 'UTC') DEFAULT now64(3),
    batch_date Date,
    checkpoint LowCardinality(String),
    suite LowCardinality(String),
    expectation_type LowCardinality(String),
    column String,
    severity LowCardinality(String),
    success UInt8,
    element_count Nullable(Int64),
    unexpected_count Nullable(Int64),
    unexpected_percent Nullable(Float64),
    observed_value String,
    kwargs String,
    data_docs_path String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(batch_date)
ORDER BY (batch_date, run_id, suite, expectation_type, column)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS quarantine (
    run_id String,
    quarantined_at DateTime64(3, 'UTC') DEFAULT now64(3),
    batch_date Date,
    dataset LowCardinality(String),
    event_id String,
    failed_expectations String,
    row_json String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(batch_date)
ORDER BY (batch_date, dataset, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS batch_runs (
    run_id String,
    batch_date Date,
    status LowCardinality(String),
    critical_failures UInt32,
    warnings UInt32,
    quarantined_rows UInt64,
    kpi_source LowCardinality(String),
    report_path String,
    data_docs_path String,
    detail String,
    started_at DateTime64(3, 'UTC'),
    finished_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = MergeTree
ORDER BY (batch_date, started_at)
SETTINGS non_replicated_deduplication_window = 10000;
