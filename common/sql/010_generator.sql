-- The generator's tables: the simulated world's catalog, its calendar, the ground truth it knows
-- (per store x product x day) and the state that lets `retail generate stream` continue the world
-- where the backfill ended. Re-running a backfill with the same seed rewrites identical rows, so
-- every table is a ReplacingMergeTree keyed by its natural key: read them with FINAL.

CREATE TABLE IF NOT EXISTS stores (
    store_id String,
    name String,
    city String,
    region LowCardinality(String),
    size_sqm Float64,
    size_class LowCardinality(String)
) ENGINE = ReplacingMergeTree
ORDER BY store_id
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS products (
    product_id String,
    name String,
    category LowCardinality(String),
    unit_price Float64,
    unit_cost Float64,
    lead_time_days Float64,
    case_pack Int32,
    popularity Float64
) ENGINE = ReplacingMergeTree
ORDER BY product_id
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS customers (
    customer_id String,
    name String,
    city String,
    segment LowCardinality(String)
) ENGINE = ReplacingMergeTree
ORDER BY customer_id
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS calendar (
    date Date,
    is_holiday UInt8,
    holiday_name String,
    day_of_week UInt8
) ENGINE = ReplacingMergeTree
ORDER BY date
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per store x product x simulated day. expected_demand is the mean of the demand
-- distribution (the oracle forecast); noise_variance its variance, so sqrt(avg(noise_variance)) is
-- the irreducible RMSE of any forecast of true_demand. Stock identity, exact on every row:
-- closing_stock = opening_stock - sales_units + receipts - shrinkage + adjustments.
CREATE TABLE IF NOT EXISTS ground_truth (
    date Date,
    store_id String,
    product_id String,
    expected_demand Float64,
    true_demand Int32,
    sales_units Int32,
    lost_sales Int32,
    noise_variance Float64,
    on_promotion UInt8,
    unit_price Float64,
    discount Float64,
    opening_stock Int32,
    receipts Int32,
    shrinkage Int32,
    adjustments Int32,
    closing_stock Int32,
    stockout UInt8
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(date)
ORDER BY (date, store_id, product_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Where the simulated world stands: the next day to simulate, stock on hand per store x product
-- (in the catalog's pair order) and the replenishment orders still in transit. The random streams
-- are derived from (seed, day), so the seed and next_date are all the RNG state there is.
CREATE TABLE IF NOT EXISTS generator_state (
    world_key String,
    seed UInt64,
    scale Float64,
    n_stores UInt32,
    n_products UInt32,
    n_customers UInt32,
    next_date Date,
    stock_json String,
    orders_json String,
    mode LowCardinality(String),
    saved_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(saved_at)
ORDER BY world_key
SETTINGS non_replicated_deduplication_window = 10000;
