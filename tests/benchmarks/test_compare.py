"""Two benchmark runs agree on a figure when the min–max spreads of its ratio overlap."""

from __future__ import annotations

from benchmarks.compare import agreement, main, render


def run(*figures: tuple[str, float, float]) -> dict:
    return {
        "figures": [
            {
                "area": "a",
                "name": name,
                "ratio": {"median": (low + high) / 2, "min": low, "max": high},
            }
            for name, low, high in figures
        ]
    }


def test_overlapping_spreads_agree_and_separate_ones_do_not() -> None:
    old = run(("touching", 1.0, 2.0), ("apart", 1.0, 1.1), ("only old", 1.0, 1.0))
    new = run(("touching", 2.0, 3.0), ("apart", 1.2, 1.3), ("only new", 5.0, 5.0))
    verdicts = {row["name"]: row["agree"] for row in agreement(old, new)}
    assert verdicts == {"touching": True, "apart": False, "only old": None, "only new": None}
    assert "1 of 2 figures agree." in render(agreement(old, new))


def test_the_command_fails_when_a_figure_disagrees(tmp_path) -> None:
    import json

    paths = []
    for name, spread in (("old", (1.0, 1.1)), ("new", (1.2, 1.3))):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(run(("x", *spread))))
        paths.append(str(path))
    assert main(paths) == 1
    assert main([paths[0], paths[0]]) == 0
