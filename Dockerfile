# The platform image used by docker-compose.yml: the project, its locked environment and the jars.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven make procps \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN make setup
ENV PATH=/app/.venv/bin:$PATH \
    SPARK_HOME=/app/.venv/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/app/.venv/bin/python
ENV PATH=$SPARK_HOME/bin:$PATH
