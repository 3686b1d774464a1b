"""Do two benchmark runs agree? Each figure's ratio agrees when the min–max spreads of the two runs
overlap (each run's spread is that of its repeats).

``python -m benchmarks.compare OLD.json NEW.json`` prints one row per figure and exits 1 when a
figure present in both runs disagrees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _spread(figure: dict[str, Any]) -> tuple[float, float] | None:
    ratio = figure.get("ratio") or {}
    if ratio.get("min") is None or ratio.get("max") is None:
        return None
    return float(ratio["min"]), float(ratio["max"])


def agreement(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure of either run: both spreads and whether they overlap."""
    before = {(f["area"], f["name"]): f for f in old["figures"]}
    after = {(f["area"], f["name"]): f for f in new["figures"]}
    rows = []
    for key in [*before, *(k for k in after if k not in before)]:
        spreads = [_spread(run[key]) if key in run else None for run in (before, after)]
        first, second = spreads
        agree = None
        if first and second:
            agree = first[0] <= second[1] and second[0] <= first[1]
        rows.append({"area": key[0], "name": key[1], "old": first, "new": second, "agree": agree})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with a count of the figures that agree."""

    def shown(spread: tuple[float, float] | None) -> str:
        return "-" if spread is None else f"{spread[0]:.3g}–{spread[1]:.3g}"

    lines = ["| area | figure | ratio, old run | ratio, new run | agree |", "|---|---|---|---|---|"]
    for row in rows:
        verdict = {True: "yes", False: "**no**", None: "not in both"}[row["agree"]]
        lines.append(
            f"| {row['area']} | {row['name']} | {shown(row['old'])} | {shown(row['new'])} "
            f"| {verdict} |"
        )
    compared = [r for r in rows if r["agree"] is not None]
    agreeing = sum(r["agree"] for r in compared)
    lines.append(f"\n{agreeing} of {len(compared)} figures agree.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Compare two results files (``benchmarks/results/<date>.json``)."""
    if len(argv) != 2:
        print("usage: python -m benchmarks.compare OLD.json NEW.json", file=sys.stderr)
        return 2
    old, new = (json.loads(Path(path).read_text()) for path in argv)
    rows = agreement(old, new)
    print(render(rows))
    return 0 if all(r["agree"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
