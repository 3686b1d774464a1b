-- Training area: forecasts precomputed by the champion demand_forecaster (`retail promote`,
-- `retail rollback` and the API, which rolls them forward day by day, rewrite them). One row per store x product x forecast day; a newer
-- refresh replaces an older one (ReplacingMergeTree versioned by created_at): read with FINAL.

CREATE TABLE IF NOT EXISTS forecasts (
    store_id LowCardinality(String),
    product_id LowCardinality(String),
    forecast_date Date,
    horizon_day UInt16,
    predicted_units Float64,
    lower_90 Float64,
    upper_90 Float64,
    model_name LowCardinality(String),
    model_version String,
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(created_at)
ORDER BY (store_id, product_id, forecast_date)
SETTINGS non_replicated_deduplication_window = 10000;
