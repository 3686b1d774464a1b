"""The REST API serving forecasts, reorder advice, open alerts and model info."""
