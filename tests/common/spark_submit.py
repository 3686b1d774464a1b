"""Run a script with the pyspark wheel's own `spark-submit`, as a user would."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

SPARK_HOME = Path(next(iter(importlib.util.find_spec("pyspark").submodule_search_locations)))


def spark_submit(
    master: str, script: Path, *args: str, conf: dict[str, str] | None = None, **env: str
) -> subprocess.CompletedProcess:
    """``spark-submit --master master [--conf k=v ...] script args`` (no UI), this interpreter as
    Spark's Python, ``env`` on top of this process's environment."""
    options = [
        f"--conf={key}={value}"
        for key, value in {"spark.ui.enabled": "false", **(conf or {})}.items()
    ]
    return subprocess.run(
        [
            str(SPARK_HOME / "bin" / "spark-submit"),
            "--master",
            master,
            *options,
            str(script),
            *args,
        ],
        env=os.environ | {"SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
