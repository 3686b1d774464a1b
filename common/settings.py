"""One typed settings object, read once from environment variables with working local defaults."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_MASTER_PATTERN = re.compile(
    r"^(local(\[(\*|\d+)(,\d+)?\])?|spark://[^:/]+:\d+(,[^:/]+:\d+)*|yarn|k8s://.+)$"
)
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$")


_SECRET_VARIABLES = {"CLICKHOUSE_PASSWORD", "API_TOKEN"}


def _url_password(url: str) -> str | None:
    """The password ``url`` holds (``scheme://user:password@host``), as written in it."""
    try:
        return urlparse(url).password
    except ValueError:  # not a URL (a bad port, say)
        return None


def redact_url(url: str) -> str:
    """``url`` with the password it may hold shown as ***."""
    password = _url_password(url)
    return url.replace(f":{password}@", ":***@", 1) if password else url


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and what it expects."""


class Settings(BaseSettings):
    """Every knob of the platform. Field names map to upper-case environment variables."""

    # An empty variable is an unset one (CHECKPOINT_DIR= must not mean the working directory).
    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, env_ignore_empty=True
    )

    spark_master: str = Field("local[*]", description="local[*], local[N] or spark://host:port")
    spark_shuffle_partitions: int = Field(
        2,
        ge=1,
        description="shuffle partitions (and state partitions of new streaming checkpoints)",
    )
    kafka_bootstrap_servers: str = Field("localhost:9092", description="host:port[,host:port]")
    clickhouse_url: str | None = Field(None, description="unset = embedded chDB store")
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr = SecretStr("")
    mlflow_tracking_uri: str = "http://localhost:5000"
    data_dir: Path = Path("data")
    checkpoint_dir: Path | None = Field(None, description="default DATA_DIR/checkpoints")
    sales_topic: str = "sales_events"
    inventory_topic: str = "inventory_events"
    kafka_partitions: int = Field(2, ge=1, le=64)
    kafka_controller_port: int = Field(9093, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)
    spark_master_port: int = Field(7077, ge=1, le=65535)
    spark_master_ui_port: int = Field(8082, ge=1, le=65535)
    spark_worker_ui_port: int = Field(8083, ge=1, le=65535)
    service_start_timeout_s: float = Field(120.0, gt=0, description="retail up: wait per service")
    demo_scale: float = Field(1.0, ge=0.1, le=100, description="make demo: world and stream size")
    demo_stream_seconds: int = Field(90, ge=10, description="make demo: seconds of live events")
    demo_stream_rate: int = Field(
        300, ge=1, description="make demo: live events per second (x scale)"
    )
    api_port: int = Field(8000, ge=1, le=65535)
    api_token: SecretStr | None = None
    store_lock_timeout_s: float = Field(120.0, gt=0)
    # At most 500,000: a batch's store insert then stays one block (ClickHouse splits an insert
    # at 1,048,576 rows or 256 MiB, and a replay could split it differently under one token).
    max_offsets_per_trigger: int | None = Field(
        50_000,
        ge=1,
        le=500_000,
        description="records per micro-batch at most (bounds a backlog's batches)",
    )
    starting_offsets: str = Field("earliest", pattern=r"^(earliest|latest|\{.*\})$")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    batch_top_n: int = Field(5, ge=1, le=100, description="products per ranking list")
    batch_quarantine_max_percent: float = Field(
        5.0, ge=0, le=100, description="above this share of quarantined rows a day fails"
    )
    batch_freshness_hours: float = Field(
        6.0, gt=0, description="a day is complete when its data reaches this close to midnight"
    )
    inventory_window_minutes: int = Field(
        10, ge=1, le=1440, description="inventory metrics: window length (a multiple of the slide)"
    )
    inventory_slide_minutes: int = Field(2, ge=1, le=1440, description="inventory metrics: slide")
    inventory_late_minutes: int = Field(
        60,
        ge=1,
        description="inventory: how far behind a key's newest event its state remembers event ids "
        "(older events are checked against the store)",
    )
    inventory_demand_window_minutes: int = Field(
        60, ge=1, description="inventory: trailing sales that give the demand rate without a model"
    )
    inventory_overstock_factor: float = Field(
        4.0, gt=1, description="inventory: overstock alert above this multiple of the reorder point"
    )
    inventory_slow_mover_hours: float = Field(
        24.0, gt=0, description="inventory: slow-mover alert after this long without a sale"
    )
    inventory_state_buckets: int = Field(
        16,
        ge=1,
        le=4096,
        description="inventory: hash buckets of the stock states (keep it for a checkpoint's life)",
    )
    inventory_service_level: float = Field(
        0.95, gt=0.5, lt=1, description="inventory: target service level of the safety stock"
    )
    inventory_review_days: float = Field(
        7.0, gt=0, description="inventory: days of demand an order covers above the reorder point"
    )
    serving_demand_model: str = Field(
        "demand_forecaster", description="serving: registered model behind the forecasts"
    )
    serving_stock_model: str = Field(
        "stock_optimizer", description="serving: registered model behind the reorder advice"
    )
    serving_alias_check_s: float = Field(
        10.0, gt=0, description="serving: re-resolve the champion aliases at most this often"
    )
    serving_store_refresh_s: float = Field(
        5.0, gt=0, description="serving: look for new rows in the store this often"
    )
    serving_max_horizon_days: int = Field(
        28, ge=1, le=366, description="serving: longest forecast horizon a request may ask for"
    )
    serving_refresh_forecasts: bool = Field(
        True, description="serving: recompute the forecasts when the champion moved without them"
    )
    serving_refresh_after_s: float = Field(
        120.0, ge=0, description="serving: first wait this long for `retail promote` to write them"
    )
    event_max_lead_minutes: int = Field(
        1440,
        ge=1,
        description="events: how far an event time may run ahead of its Kafka timestamp (a producer "
        "clock ahead); further is an impossible value, a dead letter",
    )
    sales_watermark_minutes: int = Field(
        10,
        ge=1,
        le=1440,
        description="sales: how far behind the newest event time a window closes (to be judged)",
    )
    sales_anomaly_z: float = Field(
        3.5, gt=0, description="sales: robust z-score (median/MAD) from which a window is anomalous"
    )
    sales_anomaly_model_tolerance: float = Field(
        0.5, gt=0, description="sales: relative gap to the model's expectation an anomaly needs too"
    )
    sales_anomaly_baseline_minutes: int = Field(
        60, ge=10, le=10080, description="sales: minutes of preceding windows in the baseline"
    )

    @field_validator("spark_master")
    @classmethod
    def _check_master(cls, value: str) -> str:
        if not _MASTER_PATTERN.match(value):
            raise ValueError("expected local[*], local[N], spark://host:port, yarn or k8s://...")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts or not all(_HOST_PORT.match(h) for h in hosts):
            raise ValueError("expected a comma-separated list of host:port")
        if any(int(h.rsplit(":", 1)[1]) > 65535 for h in hosts):
            raise ValueError("a port is at most 65535")
        return ",".join(hosts)

    @field_validator("data_dir", "checkpoint_dir")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        """``~/data`` from an env file (no shell expanded it) means the home folder's."""
        return None if value is None else value.expanduser()

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _check_tracking_uri(cls, value: str) -> str:
        if _HOST_PORT.match(value.split("/", 1)[0]):
            raise ValueError(f"the scheme is missing: http://{value}")
        return value

    @field_validator("starting_offsets")
    @classmethod
    def _check_starting_offsets(cls, value: str) -> str:
        if value.startswith("{"):
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc.msg}): Spark's per-partition offsets") from None
        return value

    @field_validator("clickhouse_url")
    @classmethod
    def _check_clickhouse_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        parsed = urlparse(value)
        if parsed.username or parsed.password:
            raise ValueError(
                "holds credentials: put the user in CLICKHOUSE_USER and the password in "
                "CLICKHOUSE_PASSWORD"
            )
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                "expected http(s)://host[:port][/database], or unset for embedded chDB"
            )
        try:
            parsed.port  # noqa: B018 - raises on a non-numeric port
        except ValueError as exc:
            raise ValueError("the port must be a number") from exc
        return value

    @property
    def checkpoint_root(self) -> Path:
        """Where streaming checkpoints live, one folder per job."""
        return (self.checkpoint_dir or self.data_dir / "checkpoints").resolve()

    @property
    def data_root(self) -> Path:
        return self.data_dir.resolve()

    @property
    def store_dir(self) -> Path:
        """The embedded chDB data directory."""
        return self.data_root / "chdb"

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    @property
    def uses_embedded_store(self) -> bool:
        return self.clickhouse_url is None

    def secrets(self) -> list[str]:
        """The secret values, for redaction in logs."""
        values = [self.clickhouse_password.get_secret_value()]
        if self.api_token is not None:
            values.append(self.api_token.get_secret_value())
        password = _url_password(self.mlflow_tracking_uri)  # a server behind basic auth
        if password:
            values += [password, unquote(password)]
        return list(dict.fromkeys(v for v in values if v))


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus overrides); a bad value raises SettingsError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = str(error["loc"][0]).upper() if error["loc"] else "settings"
            shown = (
                "'***'"
                if variable in _SECRET_VARIABLES
                else repr(redact_url(str(error.get("input"))))
            )
            problems.append(f"{variable}={shown}: {error['msg']}")
        raise SettingsError("Bad configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
