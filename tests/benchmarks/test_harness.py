"""The harness folds every run's rows, and every sample within a row, into one figure."""

from __future__ import annotations

from benchmarks.harness import Figure, add_row, render_markdown


def test_samples_within_runs_and_plain_rows_fold_into_one_spread() -> None:
    figures: dict[tuple[str, str], Figure] = {}
    sampled = {"name": "latency", "target": "<= 5 s", "unit": "s", "peer": "p"}
    add_row(figures, "a", sampled | {"samples": [{"value": 2.0, "ratio": 0.4, "met": True}]})
    add_row(
        figures,
        "a",
        sampled
        | {
            "samples": [
                {"value": 6.0, "ratio": 1.2, "met": False},
                {"value": 3.0, "ratio": 0.6, "met": True},
            ]
        },
    )
    add_row(figures, "a", {"name": "rate", "value": 10.0, "ratio": 0.5, "met": False})

    latency = figures[("a", "latency")].summary()
    assert latency["samples"] == 3
    assert latency["value"] == {"median": 3.0, "min": 2.0, "max": 6.0}
    assert latency["ratio"] == {"median": 0.6, "min": 0.4, "max": 1.2}
    assert latency["met"] is True  # two of three samples met the target
    rate = figures[("a", "rate")].summary()
    assert (rate["samples"], rate["met"]) == (1, False)

    table = render_markdown(
        {
            "header": {
                "date": "2026-11-24",
                "mode": "quick",
                "repeats": 2,
                "machine": "m",
                "python": "3.11",
                "versions": {},
            },
            "figures": [latency, rate],
        }
    )
    assert "| a | latency | <= 5 s | 3 s (2–6) | p | 0.6 (0.4–1.2) | 3 | yes |" in table
