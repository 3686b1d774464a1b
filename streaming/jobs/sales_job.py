"""The sales job as a plain ``spark-submit`` application.

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit --master spark://host:7077 \\
        --jars "$(ls .jvm/spark-kafka/*.jar | paste -sd,)" \\
        streaming/jobs/sales_job.py [--available-now] [--console]

The Kafka connector must be on the driver's class path from the start (``--jars``); the job runs
on spark-submit's ``--master``, and the other settings come from the environment, as for
``retail stream sales``. Without the project installed, ship it with ``--py-files`` (submit_jobs.sh
does) or run from the checkout.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # a checkout without the project
    from streaming.jobs.entrypoint import run

    run("sales", sys.argv[1:])
