#!/usr/bin/env bash
# Submit the platform's Spark jobs with spark-submit to SPARK_MASTER (the seed's verbs).
#   ./submit_jobs.sh sales|inventory [--available-now] [--console]
#                                      start a streaming job in the background (log + pid under DATA_DIR)
#   ./submit_jobs.sh all               start both streaming jobs
#   ./submit_jobs.sh ml                train both models (foreground)
#   ./submit_jobs.sh batch [--date D]  run the daily batch (foreground)
#   ./submit_jobs.sh status            the local stack, the running jobs and the cluster's applications
#   ./submit_jobs.sh stop              stop the streaming jobs started here (SIGTERM: graceful)
#   ./submit_jobs.sh clean             delete the streaming jobs' checkpoints (jobs must be stopped)
# A job's pid file holds its process group: SIGTERM to that pid stops the job between micro-batches,
# and `kill -KILL -- -PID` kills all of it.
# The project's code ships with each job (--py-files), so workers without the project still run it.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
SELF=$ROOT/$(basename "$0")  # $0 may be relative to the directory the script was called from
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || { echo "The environment is missing: run 'make setup' first." >&2; exit 1; }
export PYSPARK_PYTHON=$PY PYSPARK_DRIVER_PYTHON=$PY
SPARK_HOME=$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME

setting() { "$PY" -c "from common.settings import get_settings as g; print(g().$1)"; }
DATA_DIR=$(setting data_root)
RUN_DIR=$DATA_DIR/run
LOG_DIR=$DATA_DIR/logs
mkdir -p "$RUN_DIR" "$LOG_DIR"

code_zip() {
  local zip=$DATA_DIR/dist/retail-code.zip
  mkdir -p "$(dirname "$zip")"
  "$PY" - "$zip" <<'PY'
import sys, zipfile, pathlib
packages = ["common", "generator", "streaming", "training", "batch", "serving", "expectations"]
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as zf:
    for package in packages:
        for path in sorted(pathlib.Path(package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in {".py", ".sql", ".json", ".yml"}:
                zf.write(path)
PY
  echo "$zip"
}

submit() {  # submit <args of the retail CLI...>
  local master jars memory options
  master=$(setting spark_master)
  # The session factory's driver heap and JVM options: spark-submit starts the JVM before it runs.
  read -r memory options < <("$PY" -c "import common.spark as s; print(s.DRIVER_MEMORY, s.JVM_OPTIONS)")
  jars=$(ls "$ROOT"/.jvm/spark-kafka/*.jar 2>/dev/null | paste -sd, - || true)
  [ -n "$jars" ] || { echo "The Spark Kafka connector is missing: run 'make setup'." >&2; exit 1; }
  "$SPARK_HOME/bin/spark-submit" --master "$master" --deploy-mode client \
    --driver-memory "$memory" --driver-java-options "$options" \
    --conf spark.executor.extraJavaOptions="$options" \
    --conf spark.pyspark.python="$PY" --conf spark.sql.session.timeZone=UTC \
    --jars "$jars" --py-files "$(code_zip)" "$ROOT/common/cli.py" "$@"
}

running() {  # running <job>: some process of the job's group is alive (its wrapper may be gone)
  local pidfile=$RUN_DIR/$1.pid
  [ -f "$pidfile" ] && pgrep -g "$(cat "$pidfile")" >/dev/null
}

DRIVER="^$PY .*cli\.py"  # the command line of a job's Python driver (spark-submit starts it)

driver_of() {  # driver_of <process group>: the job's Python driver, once spark-submit started it
  pgrep -g "$1" -f "$DRIVER" || true
}

driver_below() {  # driver_below <pid>: the job's Python driver among the descendants of <pid>
  local kid
  for kid in $(pgrep -P "$1" || true); do
    if ps -o args= -p "$kid" | grep -q "$DRIVER"; then echo "$kid"; fi
    driver_below "$kid"
  done
}

foreground() {  # foreground <retail args...>: run a job here; SIGTERM/SIGINT reach its Python
  # driver, which stops between micro-batches (a plain bash would die and leave the job running).
  # Its own driver only: two wrappers started from one script share a process group.
  submit "$@" &
  local child=$! status=0
  trap 'driver=$(driver_below "$child"); kill -TERM ${driver:-$(pgrep -P "$child" || echo "$child")} 2>/dev/null || true' TERM INT
  while :; do
    wait "$child" && return 0 || status=$?
    kill -0 "$child" 2>/dev/null || return "$status"  # else a signal interrupted the wait
  done
}

start_background() {  # start_background <job> <retail args...>
  local job=$1; shift
  local pidfile=$RUN_DIR/$job.pid
  if running "$job"; then
    echo "$job is already running (pid $(cat "$pidfile"))"; return 0
  fi
  setsid nohup "$SELF" --foreground "$@" >"$LOG_DIR/$job.log" 2>&1 &
  echo $! >"$pidfile"
  # Its process group exists once setsid has run: wait for it, so that `status`, `stop` or a
  # supervisor looking right after this sees the job (at most 5 s: a job may also end at once).
  for _ in $(seq 50); do pgrep -g $! >/dev/null && break; sleep 0.1; done
  echo "$job submitted (pid $!, log $LOG_DIR/$job.log)"
}

group_gone() {  # group_gone <process group> <seconds>: true once every process of it has exited
  for _ in $(seq "$2"); do pgrep -g "$1" >/dev/null || return 0; sleep 1; done
  ! pgrep -g "$1" >/dev/null
}

stop_job() {
  local pidfile=$RUN_DIR/$1.pid
  [ -f "$pidfile" ] || return 0
  local pid driver; pid=$(cat "$pidfile")
  if running "$1"; then
    # SIGTERM to spark-submit's JVM stops the queries mid-batch: signal the Python driver alone,
    # which finishes the running micro-batch, stops its queries and exits (the JVM follows).
    driver=$(driver_of "$pid")
    if [ -n "$driver" ]; then kill -TERM $driver; else kill -TERM -- "-$pid" 2>/dev/null || true; fi
    group_gone "$pid" 90 || { kill -TERM -- "-$pid" 2>/dev/null || true; group_gone "$pid" 30; } \
      || kill -KILL -- "-$pid" 2>/dev/null || true
    echo "$1 stopped"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  --foreground) shift; foreground "$@" ;;
  sales|inventory) start_background "$1" stream "$@" ;;
  all) start_background sales stream sales; start_background inventory stream inventory ;;
  ml) shift; submit train "$@" ;;
  batch) shift; submit batch "$@" ;;
  stop) stop_job sales; stop_job inventory; stop_job api ;;
  status)
    "$ROOT/.venv/bin/retail" status
    for job in sales inventory; do
      if running "$job"; then
        echo "$job: running (pid $(cat "$RUN_DIR/$job.pid"), log $LOG_DIR/$job.log)"
      else
        echo "$job: not running"
      fi
    done
    "$ROOT/.venv/bin/retail" stream status ;;
  clean)
    for job in sales inventory; do
      if running "$job"; then
        echo "$job is running: './submit_jobs.sh stop' first" >&2; exit 1
      fi
    done
    dir=$(setting checkpoint_root)
    # Only the jobs' own folders: CHECKPOINT_DIR may be a shared mount, DATA_DIR or a parent of both.
    for job in $("$PY" -c "import streaming.sales as s, streaming.inventory as i; print(s.JOB, i.JOB)"); do
      rm -rf "${dir:?}/$job" && echo "removed the checkpoints of $job under $dir"
    done ;;
  *) sed -n '2,13p' "$SELF" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
