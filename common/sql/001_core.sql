-- Core contract tables: raw events, dead letters, stream progress, model lifecycle.
-- Every file here is applied by `retail migrate` in name order; statements must be idempotent.
-- Its leading number is the schema version it brings. Plain ClickHouse SQL: chDB and the server run it.
-- MergeTree tables set non_replicated_deduplication_window so that an insert repeated with the same
-- insert_deduplication_token (query name + batch id) is dropped: exactly once into the store.

CREATE TABLE IF NOT EXISTS sales_events (
    event_id String,
    event_time DateTime64(3, 'UTC'),
    transaction_id String,
    store_id LowCardinality(String),
    customer_id Nullable(String),
    product_id LowCardinality(String),
    category LowCardinality(String),
    quantity Int32,
    unit_price Float64,
    discount Float64,
    total_amount Float64,
    payment_method LowCardinality(String),
    channel LowCardinality(String),
    on_promotion UInt8 DEFAULT 0,
    source LowCardinality(String) DEFAULT 'stream',
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    ingest_token LowCardinality(String) DEFAULT ''
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (toDate(event_time), store_id, product_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- ingest_token (the streaming batch that stored the event: its replays are not repeats) came after
-- the first release.
ALTER TABLE sales_events ADD COLUMN IF NOT EXISTS ingest_token LowCardinality(String) DEFAULT '';

CREATE TABLE IF NOT EXISTS inventory_events (
    event_id String,
    event_time DateTime64(3, 'UTC'),
    store_id LowCardinality(String),
    product_id LowCardinality(String),
    event_type LowCardinality(String),
    quantity_change Int32,
    stock_level Int32,
    reorder_point Int32,
    lead_time_days Float64,
    unit_cost Float64,
    source LowCardinality(String) DEFAULT 'stream',
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    ingest_token LowCardinality(String) DEFAULT ''
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (toDate(event_time), store_id, product_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- ingest_token (as in sales_events: an event older than what the job's state remembers is a repeat
-- only if another batch stored it) came after the first release.
ALTER TABLE inventory_events ADD COLUMN IF NOT EXISTS ingest_token LowCardinality(String) DEFAULT '';

CREATE TABLE IF NOT EXISTS dead_letters (
    topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    kafka_timestamp DateTime64(3, 'UTC'),
    raw_payload String,
    payload_encoding LowCardinality(String),
    error String,
    job LowCardinality(String),
    received_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY (topic, kafka_partition, kafka_offset, kafka_timestamp)
SETTINGS non_replicated_deduplication_window = 10000;

-- kafka_timestamp came after the first release: keyed by offset alone, a recreated topic's new bad
-- record replaced the old one at the same offset. Rows from before have 1970-01-01 (unknown). A
-- column new to the sorting key may have no default.
ALTER TABLE dead_letters
    ADD COLUMN IF NOT EXISTS kafka_timestamp DateTime64(3, 'UTC') AFTER kafka_offset,
    MODIFY ORDER BY (topic, kafka_partition, kafka_offset, kafka_timestamp);

CREATE TABLE IF NOT EXISTS stream_progress (
    job LowCardinality(String),
    query_name LowCardinality(String),
    batch_id Int64,
    batch_time DateTime64(3, 'UTC'),
    input_rows Int64,
    input_rows_per_second Float64,
    processed_rows_per_second Float64,
    batch_duration_ms Int64,
    lag_messages Int64,
    watermark Nullable(DateTime64(3, 'UTC')),
    late_rows Int64 DEFAULT 0,
    query_id String
) ENGINE = ReplacingMergeTree
ORDER BY (job, query_name, batch_id, query_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- late_rows (events dropped for being older than the watermark) came after the first release.
ALTER TABLE stream_progress ADD COLUMN IF NOT EXISTS late_rows Int64 DEFAULT 0;
-- query_id (the checkpoint's query id) came later still: batch ids start again at 0 in a new
-- checkpoint, and its rows replaced the history of the old one. A column new to the sorting key
-- may have no default.
ALTER TABLE stream_progress
    ADD COLUMN IF NOT EXISTS query_id String,
    MODIFY ORDER BY (job, query_name, batch_id, query_id);

CREATE TABLE IF NOT EXISTS model_events (
    event_time DateTime64(3, 'UTC') DEFAULT now64(3),
    job LowCardinality(String),
    model_name LowCardinality(String),
    model_version String,
    event_type LowCardinality(String),
    detail String
) ENGINE = MergeTree
ORDER BY (model_name, event_time)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS model_promotions (
    changed_at DateTime64(3, 'UTC') DEFAULT now64(3),
    model_name LowCardinality(String),
    alias LowCardinality(String),
    from_version Nullable(String),
    to_version Nullable(String),
    actor String,
    reason String,
    metric_name String,
    challenger_metric Nullable(Float64),
    champion_metric Nullable(Float64)
) ENGINE = ReplacingMergeTree
ORDER BY (model_name, alias, changed_at)
SETTINGS non_replicated_deduplication_window = 10000;
