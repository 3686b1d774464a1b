"""Run every benchmark module a few times and fold the figures into one table.

A benchmark module ``benchmarks/bench_<area>.py`` exposes ``run(quick: bool) -> list[dict]``; each
row has ``name``, ``target`` (text such as ">= 50000 events/s" or "<= 3x"), ``value``, ``unit``,
``peer`` (what it was compared with, and its value), ``ratio`` and ``met`` (bool), or, for a figure
measured several times within a run, ``samples``: one dict of ``value``, ``ratio`` and ``met`` per
measurement. The harness starts one local stack for the whole run (its own DATA_DIR and free
ports, exported so that ``get_settings()`` sees them), calls each module ``repeats`` times, and
reports the median of each figure with its min and max over every sample of every run. A module
that is not built shows as "not built", never silently absent.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import platform
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# (module, issue it measures) in the order of the table.
MODULES = [
    ("benchmarks.bench_generator", "generator"),
    ("benchmarks.bench_sales_stream", "sales stream"),
    ("benchmarks.bench_inventory_stream", "inventory stream"),
    ("benchmarks.bench_training", "training"),
    ("benchmarks.bench_batch", "batch"),
    ("benchmarks.bench_serving", "serving"),
]


@dataclass
class Figure:
    """One row of the table: every repeat's value and ratio, summarised by the median."""

    area: str
    name: str
    target: str = ""
    unit: str = ""
    peer: str = ""
    values: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    met: list[bool] = field(default_factory=list)
    note: str = ""

    def summary(self) -> dict[str, Any]:
        def spread(xs: list[float]) -> dict[str, float | None]:
            if not xs:
                return {"median": None, "min": None, "max": None}
            return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

        return {
            "area": self.area,
            "name": self.name,
            "target": self.target,
            "unit": self.unit,
            "peer": self.peer,
            "value": spread(self.values),
            "ratio": spread(self.ratios),
            "samples": len(self.values),
            "met": bool(self.met)
            and statistics.median([1.0 if m else 0.0 for m in self.met]) >= 0.5,
            "note": self.note,
        }


def add_row(figures: dict[tuple[str, str], Figure], area: str, row: dict[str, Any]) -> None:
    """Fold one row of a module's run into its figure: the row's value, ratio and met, or each
    of its ``samples`` (several independent measurements taken within the run)."""
    figure = figures.setdefault(
        (area, row["name"]),
        Figure(area, row["name"], row.get("target", ""), row.get("unit", ""), row.get("peer", "")),
    )
    for sample in row.get("samples") or [row]:
        if sample.get("value") is not None:
            figure.values.append(float(sample["value"]))
        if sample.get("ratio") is not None:
            figure.ratios.append(float(sample["ratio"]))
        figure.met.append(bool(sample.get("met")))
    figure.peer = row.get("peer", figure.peer)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated_environment(root: Path) -> dict[str, str]:
    """Environment for a benchmark run: its own DATA_DIR and free ports."""
    mlflow_port = _free_port()
    return {
        "DATA_DIR": str(root / "data"),
        "CHECKPOINT_DIR": str(root / "checkpoints"),
        "SPARK_MASTER": "local[2]",
        "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{_free_port()}",
        "KAFKA_CONTROLLER_PORT": str(_free_port()),
        "MLFLOW_PORT": str(mlflow_port),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "SPARK_MASTER_PORT": str(_free_port()),
        "SPARK_MASTER_UI_PORT": str(_free_port()),
        "SPARK_WORKER_UI_PORT": str(_free_port()),
        "API_PORT": str(_free_port()),
    }


def machine_header(quick: bool, repeats: int) -> dict[str, Any]:
    """What the figures were measured on: the machine, the versions, the mode."""
    versions = {}
    for package in (
        "pyspark",
        "mlflow",
        "chdb",
        "kafka-python",
        "confluent-kafka",
        "great-expectations",
        "scikit-learn",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "python": platform.python_version(),
        "versions": versions,
        "mode": "quick" if quick else "full",
        "repeats": repeats,
    }


def remove_run_folder(root: Path) -> None:
    """Delete a finished run's folder (its store, broker log and checkpoints: gigabytes), after
    closing this process's embedded store on it. A file that cannot go is reported, not raised:
    the run's results matter more than its leftovers."""
    from common.store.embedded import remove_data_folder

    if remove_data_folder(root):
        log.info("removed the run's folder %s", root)
    else:
        log.warning("could not remove all of the run's folder %s", root)


def run_benchmarks(
    quick: bool, repeats: int, only: list[str] | None = None, keep_data: bool = False
) -> dict[str, Any]:
    """Run the modules ``repeats`` times on one local stack; return header and figures. The run's
    folder is removed afterwards, unless ``keep_data`` or a benchmark failed (its logs are there)."""
    from common import stack
    from common.settings import get_settings

    root = Path(tempfile.mkdtemp(prefix="retail-bench-"))
    os.environ.update(isolated_environment(root))
    get_settings.cache_clear()
    settings = get_settings()
    figures: dict[tuple[str, str], Figure] = {}
    area_seconds: dict[str, float] = {}
    area_sizes: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    stack.up(settings)
    try:
        for module_name, area in MODULES:
            if only and area not in only:
                continue
            area_started = time.monotonic()
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                figures[(area, "-")] = Figure(area, "-", note="not built")
                continue
            if hasattr(module, "sizes"):
                area_sizes[area] = module.sizes(quick)
            for repeat in range(repeats):
                log.info("benchmark %s, run %d of %d", area, repeat + 1, repeats)
                try:
                    rows = module.run(quick)
                except Exception as exc:  # a failing benchmark is a row, not a crash of the table
                    log.exception("benchmark %s failed", area)
                    figures[(area, "error")] = Figure(
                        area, "error", note=f"{type(exc).__name__}: {exc}"
                    )
                    break
                for row in rows:
                    add_row(figures, area, row)
            area_seconds[area] = round(time.monotonic() - area_started, 1)
            log.info("benchmark %s took %.0f s", area, area_seconds[area])
    finally:
        stack.down(settings)
    if keep_data or any(figure.name == "error" for figure in figures.values()):
        log.warning("the run's data, logs and checkpoints are kept in %s", root)
    else:
        remove_run_folder(root)
    return {
        "header": machine_header(quick, repeats)
        | {
            "seconds": round(time.monotonic() - started, 1),
            "area_seconds": area_seconds,
            "sizes": area_sizes,
        },
        "figures": [f.summary() for f in figures.values()],
    }


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _size(value: Any) -> str:
    """A size for the header: 1,000,000; a (stores, products) pair as 20 x 50; a list of them."""
    if isinstance(value, list):
        return ", ".join(_size(item) for item in value)
    if isinstance(value, tuple):
        return " x ".join(str(n) for n in value)
    if isinstance(value, float):
        return f"{value:,g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_markdown(result: dict[str, Any]) -> str:
    """The table as Markdown: median (min–max) of each value and ratio, and whether it met its target."""
    header = result["header"]
    lines = [
        f"# Benchmarks {header['date']} ({header['mode']} mode, {header['repeats']} runs each)",
        "",
        f"Machine: {header['machine']}, Python {header['python']}; "
        + ", ".join(f"{k} {v}" for k, v in header["versions"].items())
        + f". Wall time {header.get('seconds', '-')} s"
        + "".join(
            f"{'; ' if i else ' ('}{area} {seconds:.0f} s"
            for i, (area, seconds) in enumerate(header.get("area_seconds", {}).items())
        )
        + (")." if header.get("area_seconds") else "."),
        "",
        *[
            f"- {area} sizes: " + ", ".join(f"{k} {_size(v)}" for k, v in sizes.items())
            for area, sizes in header.get("sizes", {}).items()
        ],
        "",
        "| area | figure | target | value (median, min–max) | peer | ratio (median, min–max) "
        "| samples | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in result["figures"]:
        if f["note"]:
            lines.append(f"| {f['area']} | {f['name']} | | {f['note']} | | | | no |")
            continue
        value, ratio = f["value"], f["ratio"]
        lines.append(
            f"| {f['area']} | {f['name']} | {f['target']} | {_fmt(value['median'])} {f['unit']} "
            f"({_fmt(value['min'])}–{_fmt(value['max'])}) | {f['peer']} | {_fmt(ratio['median'])} "
            f"({_fmt(ratio['min'])}–{_fmt(ratio['max'])}) | {f['samples']} | "
            f"{'yes' if f['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def write_results(result: dict[str, Any], folder: Path = RESULTS_DIR) -> Path:
    """Write ``<date>.md`` and ``<date>.json`` (and ``latest.md``); return the Markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = result["header"]["date"][:10] + ("" if result["header"]["mode"] == "quick" else "-full")
    markdown = render_markdown(result)
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    (folder / f"{stem}.md").write_text(markdown)
    (folder / "latest.md").write_text(markdown)
    return folder / f"{stem}.md"
