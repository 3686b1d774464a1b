"""`retail demo`: set up, start the stack, backfill, train, promote, stream with scoring, batch, serve.

Each step is the command a user would type (`retail ...` or `./submit_jobs.sh ...`), so the demo is
the README's quick start, step for step. The stack, both streaming jobs and the API stay up afterwards
until `make down`. Sizes come from DEMO_SCALE, DEMO_STREAM_SECONDS and DEMO_STREAM_RATE.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import typer

from common.settings import Settings, get_settings
from training.cli import MODEL_CHOICES, QUALITY_GATE_EXIT

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SEED = 7
QUIET_S = 20  # no new stored event for this long after the stream ended: the jobs caught up
HISTORY_DAYS = 120
# A little of what real feeds carry, so the summary shows dead letters and deduplication at work.
DEMO_FAULTS = {"malformed_json": 0.002, "wrong_types": 0.002, "duplicate": 0.005, "late": 0.01}


def _retail(*args: str) -> list[str]:
    return [sys.executable, "-m", "common.cli", *args]


def _run_step(
    timings: dict[str, float], title: str, argv: list[str], accepted: tuple[int, ...] = (0,)
) -> int:
    """Run one step's command; stop the demo unless it exits with an ``accepted`` code."""
    shown = " ".join(
        ["retail", *argv[3:]] if argv[:3] == _retail() else [Path(argv[0]).name, *argv[1:]]
    )
    typer.secho(f"\n==> {title}: {shown}", bold=True)
    started = time.monotonic()
    result = subprocess.run(argv, cwd=PROJECT_ROOT, check=False)
    timings[title] = time.monotonic() - started
    if result.returncode not in accepted:
        typer.secho(
            f"'{title}' failed (exit {result.returncode}); the stack stays up: `make down`",
            fg="red",
        )
        raise typer.Exit(result.returncode)
    return result.returncode


def _stream_live_events(settings: Settings, timings: dict[str, float]) -> dict:
    """Send live events (continuing the backfilled world) and wait until both jobs stored them."""
    from demo.summary import stored_stream_events
    from generator.faults import FaultRates
    from generator.stream import produce

    rate = settings.demo_stream_rate * settings.demo_scale
    fault_flags = " ".join(
        f"--{kind.replace('_', '-')}-rate {r:g}" for kind, r in DEMO_FAULTS.items()
    )
    typer.secho(
        f"\n==> stream live events: retail generate stream --rate {rate:g} "
        f"--seconds {settings.demo_stream_seconds} --seed {SEED} --scale {settings.demo_scale:g} "
        f"{fault_flags}",
        bold=True,
    )
    started = time.monotonic()
    before = stored_stream_events(settings)  # an earlier demo's live events stay in the store
    counts = produce(
        settings,
        rate,
        settings.demo_stream_seconds,
        SEED,
        FaultRates(**DEMO_FAULTS),
        scale=settings.demo_scale,
    )
    typer.echo(
        f"sent {counts['records']:,} records ({counts['records_per_s']:,.0f}/s); waiting for the jobs"
    )
    deadline = time.monotonic() + 240
    last, steady_since = None, time.monotonic()
    while True:
        stored = stored_stream_events(settings)
        added = {name: stored[name] - before[name] for name in stored}
        if (
            added["sales"] >= counts["sales_events"]
            and added["inventory"] >= counts["inventory_events"]
        ):
            break
        if added != last:
            last, steady_since = added, time.monotonic()
        elif time.monotonic() - steady_since >= QUIET_S:
            # The stream re-sends the day an earlier run cut off: the jobs drop those repeats.
            typer.echo(
                f"the jobs stored {added['sales']:,} sales and {added['inventory']:,} inventory "
                f"events and nothing more for {QUIET_S} s: the rest repeat events stored before"
            )
            break
        if time.monotonic() > deadline:
            typer.secho(
                f"the jobs stored {added['sales']:,} of {counts['sales_events']:,} sales and "
                f"{added['inventory']:,} of {counts['inventory_events']:,} inventory events "
                f"in 240 s; going on (their logs: {settings.data_root / 'logs'})",
                fg="yellow",
            )
            break
        time.sleep(2)
    timings["stream live events"] = time.monotonic() - started
    return {**counts, "stored_before": before}


def _backfilled(settings: Settings) -> bool:
    """The demo's world has history in the store already (an earlier demo): a backfill started
    on another day would write a second, different history beside it."""
    from common.store import migrate, open_store
    from generator.state import load_state
    from generator.world import build_world

    store = open_store(settings)
    migrate(store)
    return load_state(store, build_world(SEED, settings.demo_scale)) is not None


def _start_api(settings: Settings, timings: dict[str, float]) -> None:
    """`retail serve` in the background (pid under DATA_DIR/run, stopped by `make down`)."""
    import httpx2
    from tenacity import retry, stop_after_delay, wait_fixed

    typer.secho(f"\n==> start the API: retail serve --port {settings.api_port}", bold=True)
    started = time.monotonic()
    run_dir, log_dir = settings.data_root / "run", settings.data_root / "logs"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "api.log", "ab") as log_file:
        process = subprocess.Popen(
            _retail("serve"),
            cwd=PROJECT_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (run_dir / "api.pid").write_text(str(process.pid))

    @retry(stop=stop_after_delay(90), wait=wait_fixed(1), reraise=True)
    def healthy() -> None:
        if process.poll() is not None:
            raise typer.Exit(1)
        httpx2.get(f"http://127.0.0.1:{settings.api_port}/health", timeout=2).raise_for_status()

    healthy()
    timings["start the API"] = time.monotonic() - started


def _models_with_challenger(settings: Settings) -> list[str]:
    """The models that training registered as @challenger."""
    from mlflow import MlflowClient

    from training.registry import alias_version

    client = MlflowClient(settings.mlflow_tracking_uri)
    return [name for name in MODEL_CHOICES if alias_version(client, name, "challenger")]


def run_demo(settings: Settings) -> None:
    """Run every step in order, then print the summary."""
    from demo.summary import print_summary

    timings: dict[str, float] = {}
    started = time.monotonic()
    scale = f"{settings.demo_scale:g}"
    _run_step(timings, "start the local stack", _retail("up"))
    backfill = (
        "generate",
        "backfill",
        "--days",
        str(HISTORY_DAYS),
        "--seed",
        str(SEED),
        "--scale",
        scale,
    )
    if _backfilled(settings):
        typer.secho(
            f"\n==> history: world of seed {SEED} at scale {scale} already backfilled here; "
            "the stream continues it (for a fresh start: `make down`, then remove DATA_DIR)",
            bold=True,
        )
    else:
        _run_step(timings, "backfill history", _retail(*backfill))
    train = ("train", "--max-evals", "3", "--folds", "2", "--max-trees", "40", "--max-depth", "8")
    title = "train and register both models"
    if _run_step(timings, title, _retail(*train), (0, QUALITY_GATE_EXIT)) == QUALITY_GATE_EXIT:
        typer.secho(
            "a model did not beat its naive forecast on this history and was not registered: the "
            "demo goes on without it, and its streaming job runs as with no champion",
            fg="yellow",
        )
    challengers = _models_with_challenger(settings)
    if challengers:
        promote = _retail("promote", *[a for name in challengers for a in ("--model", name)])
        _run_step(timings, "promote the first champion", promote)
    _run_step(timings, "start both streaming jobs", [str(PROJECT_ROOT / "submit_jobs.sh"), "all"])
    counts = _stream_live_events(settings, timings)
    _run_step(timings, "daily batch with the data-quality gate", _retail("batch"))
    _start_api(settings, timings)
    timings["total"] = time.monotonic() - started
    print_summary(settings, timings, counts)


def register(app: typer.Typer) -> None:
    """Add `retail demo` to the CLI."""

    @app.command()
    def demo() -> None:
        """Run the whole platform end to end on the embedded defaults and print a summary."""
        run_demo(get_settings())
