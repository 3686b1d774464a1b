"""The sales job as a plain ``spark-submit`` application.

    spark-submit --master spark://host:7077 streaming/jobs/sales_job.py [--available-now] [--console]

The session factory adds the Kafka connector and the settings come from the environment, as for
``retail stream sales``. Without the project installed, ship it with ``--py-files`` (submit_jobs.sh
does) or run from the checkout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="The sales streaming job")
    parser.add_argument("--available-now", action="store_true", help="drain the topic, then exit")
    parser.add_argument("--console", action="store_true", help="print instead of writing the store")
    args = parser.parse_args(argv)

    from common.logs import configure_logging
    from common.settings import get_settings
    from streaming.sales import main

    settings = get_settings()
    configure_logging(settings)
    main(settings, available_now=args.available_now, console=args.console)


if __name__ == "__main__":
    project_root = Path(__file__).resolve().parents[2]
    if str(project_root) not in sys.path:
        sys.path.insert(0, str(project_root))
    _run(sys.argv[1:])
