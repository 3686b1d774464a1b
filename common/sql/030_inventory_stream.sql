-- Inventory streaming job: current stock, pane partials and sliding window metrics, stock
-- recommendations, alerts and their lifecycle changes. Raw events go to the core table
-- inventory_events. Every insert from the job carries the deduplication token
-- '<query>-<batch id>', so a replayed micro-batch writes nothing twice.

-- The latest stock level of each store x product (by event time): read with FINAL.
CREATE TABLE IF NOT EXISTS stock_levels (
    store_id LowCardinality(String),
    product_id LowCardinality(String),
    stock_level Int32,
    event_time DateTime64(3, 'UTC'),
    reorder_point Int32,
    lead_time_days Float64,
    unit_cost Float64,
    effective_reorder_point Float64,
    demand_per_hour Nullable(Float64),
    eta_hours Nullable(Float64),
    threshold_source LowCardinality(String),
    model_name String,
    model_version String,
    last_event_id String,
    last_event_type LowCardinality(String),
    updated_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(event_time)
ORDER BY (store_id, product_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Partial sums per micro-batch and pane (the window slide) per store x product, from the events
-- that count (applied, or late within INVENTORY_LATE_MINUTES; duplicates never). Panes combine
-- into windows with sum(): exact, whatever the batching.
CREATE TABLE IF NOT EXISTS inventory_panes (
    pane_start DateTime('UTC'),
    store_id LowCardinality(String),
    product_id LowCardinality(String),
    units_sold Int64,
    units_received Int64,
    units_shrinkage Int64,
    units_adjusted Int64,
    stock_level_sum Int64,
    events Int64,
    written_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = MergeTree
PARTITION BY toYYYYMM(pane_start)
ORDER BY (pane_start, store_id, product_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Sliding windows (INVENTORY_WINDOW_MINUTES long, sliding by INVENTORY_SLIDE_MINUTES) per store x
-- product, and per store (product_id 'ALL', over the products that moved in the window).
-- avg_on_hand is the mean level after each event; turnover = units_sold / avg_on_hand;
-- days_of_cover = avg_on_hand / (units sold per day at the window's rate). A window touched again
-- is recomputed from its panes and replaces its earlier row: read with FINAL.
CREATE TABLE IF NOT EXISTS inventory_metrics (
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    store_id LowCardinality(String),
    product_id LowCardinality(String),
    units_sold Int64,
    units_received Int64,
    units_shrinkage Int64,
    units_adjusted Int64,
    events Int64,
    products UInt32,
    avg_on_hand Float64,
    turnover Nullable(Float64),
    days_of_cover Nullable(Float64),
    computed_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, store_id, product_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- The champion models' advice per store x product at its latest level: lead-time demand
-- (stock_optimizer), daily demand (demand_forecaster), safety stock, reorder point, order quantity,
-- days of cover, stockout ETA, stamped with both model versions. One current row per key: FINAL.
CREATE TABLE IF NOT EXISTS stock_recommendations (
    store_id LowCardinality(String),
    product_id LowCardinality(String),
    as_of DateTime64(3, 'UTC'),
    forecast_date Date,
    stock_level Int32,
    lead_time_days Float64,
    lead_time_demand Float64,
    daily_demand Float64,
    safety_stock Float64,
    reorder_point Float64,
    order_up_to Float64,
    order_quantity Int64,
    reorder_now UInt8,
    days_of_cover Nullable(Float64),
    eta_hours Nullable(Float64),
    stockout_eta Nullable(DateTime64(3, 'UTC')),
    service_level Float64,
    stock_model_name LowCardinality(String),
    stock_model_version String,
    demand_model_name LowCardinality(String),
    demand_model_version String,
    query_name LowCardinality(String),
    batch_id Int64,
    scored_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(scored_at)
ORDER BY (store_id, product_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per alert (its latest version, by updated_at = event time of the last change): at most
-- one open alert per store x product x alert_type. Read with FINAL.
CREATE TABLE IF NOT EXISTS stock_alerts (
    alert_id String,
    store_id LowCardinality(String),
    product_id LowCardinality(String),
    alert_type LowCardinality(String),
    severity LowCardinality(String),
    peak_severity LowCardinality(String),
    status LowCardinality(String),
    opened_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    resolved_at Nullable(DateTime64(3, 'UTC')),
    reason String,
    stock_level Int32,
    reorder_point Float64,
    threshold Float64,
    eta_hours Nullable(Float64),
    stockout_eta Nullable(DateTime64(3, 'UTC')),
    model_name String,
    model_version String,
    opened_event_id String,
    last_event_id String,
    revision UInt32,
    detected_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (store_id, product_id, alert_type, alert_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- The lifecycle of every alert: opened, escalated, deescalated, resolved (append only).
-- detected_at: when the job judged the event; written_at: when the row reached the store.
CREATE TABLE IF NOT EXISTS stock_alert_changes (
    alert_id String,
    store_id LowCardinality(String),
    product_id LowCardinality(String),
    alert_type LowCardinality(String),
    change LowCardinality(String),
    from_severity LowCardinality(String),
    to_severity LowCardinality(String),
    event_id String,
    event_time DateTime64(3, 'UTC'),
    stock_level Int32,
    reorder_point Float64,
    eta_hours Nullable(Float64),
    model_name String,
    model_version String,
    reason String,
    detected_at DateTime64(3, 'UTC'),
    written_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (store_id, product_id, event_time, alert_id)
SETTINGS non_replicated_deduplication_window = 10000;
