"""The daily batch: KPIs, rankings, materialized views, business report, data-quality gate."""
