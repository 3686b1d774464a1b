-- Distinct transactions and customers per day overall, per store and per category, kept on insert.
-- sales_daily keeps the same states per product: merging those for a store or a category inserts
-- every line item's ids again (as many hash insertions as a query over the raw rows), while this
-- view keeps one state per day and level. The batch reads its distinct counts from here.
-- Days inserted before this view existed are rebuilt by batch.views.repair_daily_views.

CREATE TABLE IF NOT EXISTS sales_daily_baskets (
    sale_date Date,
    level LowCardinality(String),
    store_key LowCardinality(String),
    category_key LowCardinality(String),
    line_items SimpleAggregateFunction(sum, UInt64),
    transactions AggregateFunction(uniqExact, String),
    customers AggregateFunction(uniqExact, Nullable(String))
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(sale_date)
ORDER BY (sale_date, level, store_key, category_key)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sales_daily_baskets_mv TO sales_daily_baskets AS
SELECT
    toDate(event_time) AS sale_date,
    level_key.1 AS level,
    level_key.2 AS store_key,
    level_key.3 AS category_key,
    count() AS line_items,
    uniqExactState(transaction_id) AS transactions,
    uniqExactState(customer_id) AS customers
FROM sales_events
ARRAY JOIN [('overall', 'ALL', 'ALL'), ('store', toString(store_id), 'ALL'),
            ('category', 'ALL', toString(category))] AS level_key
GROUP BY sale_date, level, store_key, category_key;
