# One way in: every target wraps the `retail` CLI or the project's own install steps.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
VENV := .venv
RETAIL := $(VENV)/bin/retail
SPARK_KAFKA_EXCLUDES := org.slf4j,org.lz4,org.xerial.snappy,com.github.luben,com.google.code.findbugs,org.apache.hadoop,org.scala-lang,org.scala-lang.modules
export PYSPARK_PYTHON := $(abspath $(VENV)/bin/python)

.PHONY: setup jars python-env browser bench-tools up down status cluster demo test lint bench bench-full chaos serve clean

setup: python-env jars browser ## install everything (idempotent)

python-env: $(VENV)/.synced
$(VENV)/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 && uv --version | grep -q $(UV_VERSION) || $(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	UV_PROJECT_ENVIRONMENT=$(VENV) uv sync --frozen --python $(PYTHON)
	@touch $@

jars: .jvm/kafka/.resolved .jvm/spark-kafka/.resolved
.jvm/kafka/.resolved: jvm/kafka/pom.xml
	@command -v java >/dev/null || { echo "Java 17+ is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required to resolve the Kafka jars (apt-get install maven)"; exit 1; }
	rm -rf .jvm/kafka && mvn -q -B -f jvm/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(abspath .jvm/kafka)
	@touch $@
.jvm/spark-kafka/.resolved: jvm/spark-kafka/pom.xml
	@command -v mvn >/dev/null || { echo "Maven is required to resolve the Spark Kafka connector (apt-get install maven)"; exit 1; }
	rm -rf .jvm/spark-kafka && mvn -q -B -f jvm/spark-kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DexcludeArtifactIds=spark-tags_2.13 -DexcludeGroupIds=$(SPARK_KAFKA_EXCLUDES) -DoutputDirectory=$(abspath .jvm/spark-kafka)
	@touch $@

browser: ## Debian's Chromium, for the report and MLflow UI tests (Playwright drives /usr/bin/chromium)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Chromium is missing: sudo apt-get install chromium"; exit 1; fi; }

bench-tools: ## Debian's wrk, the serving benchmark's load generator
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk is missing: sudo apt-get install wrk"; exit 1; fi; }

up: setup
	$(RETAIL) up

cluster: setup
	$(RETAIL) up --cluster

down: ## stop the streaming jobs, the API and the stack
	./submit_jobs.sh stop
	$(RETAIL) down

status:
	$(RETAIL) status

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

lint: python-env
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

demo: setup
	$(RETAIL) demo

clean:
	./submit_jobs.sh clean

bench: setup bench-tools ## quick benchmarks: one table, benchmarks/results/<date>.md
	$(RETAIL) bench

bench-full: setup bench-tools
	$(RETAIL) bench --full

serve: setup
	$(RETAIL) serve

chaos: setup ## the chaos table: faults, events, lost, duplicated
	$(VENV)/bin/python -m benchmarks.chaos

train: setup
	$(RETAIL) train

promote: setup
	$(RETAIL) promote
