"""The sales job as a plain ``spark-submit`` application.

    spark-submit --master spark://host:7077 streaming/jobs/sales_job.py [--available-now] [--console]

The session factory adds the Kafka connector and the settings come from the environment, as for
``retail stream sales``. Without the project installed, ship it with ``--py-files`` (submit_jobs.sh
does) or run from the checkout.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # a checkout without the project
    from streaming.jobs.entrypoint import run

    run("sales", sys.argv[1:])
