"""Start, stop and inspect the real local services: a single-node Kafka broker (KRaft), the MLflow
tracking server, and a Spark standalone master and worker.

Each service runs as a detached process group with a pid file and a log file under DATA_DIR. Every
wait polls a readiness probe until a deadline. When the settings point at external services
(a remote KAFKA_BOOTSTRAP_SERVERS, a remote MLFLOW_TRACKING_URI) `up` leaves them alone.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

from common.settings import Settings, redact_url

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KAFKA_JARS_DIR = PROJECT_ROOT / ".jvm" / "kafka"

_HOST = "127.0.0.1"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_POLL_INTERVAL_S = 0.25
_STOP_TIMEOUT_S = 30.0
_KILL_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 20
_TOPIC_ALREADY_EXISTS = 36
_KAFKA_JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx768m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_SPARK_WORKER_CORES = 2
_SPARK_WORKER_MEMORY = "2g"
_SPARK_DAEMON_MEMORY = "512m"

T = TypeVar("T")


class StackError(RuntimeError):
    """A local service could not be started, reached or stopped; the message says what to do."""


# --- processes: pid files, liveness, process groups ------------------------------------------

# Processes launched by this interpreter, kept so that they are reaped (no zombies, no warnings).
_children: dict[int, subprocess.Popen[bytes]] = {}


def _poll(check: Callable[[], T], timeout_s: float) -> T | None:
    """Call `check` until it returns something truthy or `timeout_s` passes; None on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(_POLL_INTERVAL_S, remaining))


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _proc_stat(pid: int | str) -> tuple[str, int] | None:
    """(state, process group) of a process, from /proc; None when it is gone or unreadable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[2])


def _cmdline(pid: int) -> str | None:
    """The process's command line joined by spaces; None where /proc cannot tell."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return None


def _is_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    return stat is None or stat[0] != "Z"


def _live_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in `pid_file` if that process lives and its command line contains `marker`."""
    pid = _read_pid(pid_file)
    if pid is None or not _is_alive(pid):
        return None
    if pid in _children:
        return pid  # launched by this interpreter and not exited: no recycled pid to rule out
    cmdline = _cmdline(pid)
    # An empty command line is a process between fork and exec (or re-exec'ing): not yet telling.
    return pid if not cmdline or marker in cmdline else None


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process remains in process group `pgid`."""
    if pgid in _children:
        _children[pgid].poll()
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(entry.name)
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                return True
    return False


def _signal(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group led by `pid` (a daemon and its children), else to `pid`."""
    try:
        if os.getpgid(pid) == pid and pid != os.getpgrp():
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _launch(argv: list[str], cwd: Path, env: dict[str, str], log_file: Path) -> int:
    """Start `argv` detached in its own session, output appended to `log_file`; its pid."""
    with log_file.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[process.pid] = process
    return process.pid


def _log_tail(log_file: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = log_file.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


# --- network ---------------------------------------------------------------------------------


def _port_in_use(port: int) -> bool:
    """Whether something already listens on `port` (a bind attempt, as the service would do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return True
    return False


def _port_owner(port: int) -> str | None:
    """Best effort: 'pid N (command)' of the process listening on `port`, from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir() if inodes else ():
        if entry.name.isdigit() and not inodes.isdisjoint(_fd_targets(entry)):
            command = (_cmdline(int(entry.name)) or "").strip()
            return f"pid {entry.name} ({command[:120]})"
    return None


def _fd_targets(process_dir: Path) -> set[str]:
    """Where a process's open file descriptors point; vanished or hidden ones are skipped."""
    targets = set()
    try:
        descriptors = list((process_dir / "fd").iterdir())
    except OSError:
        return targets
    for descriptor in descriptors:
        try:
            targets.add(os.readlink(descriptor))
        except OSError:
            continue
    return targets


def _answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _http_get(url: str, timeout_s: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "Java 17+ is required for Kafka and Spark, but `java` is not on PATH "
            "(apt-get install openjdk-17-jre-headless)"
        )
    return java


def _write_log4j2(path: Path, info_loggers: list[str]) -> None:
    """A quiet log4j2 config: warnings to stdout, plus INFO from the named loggers."""
    lines = [
        "status = warn",
        "appender.console.type = Console",
        "appender.console.name = STDOUT",
        "appender.console.layout.type = PatternLayout",
        "appender.console.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = WARN",
        "rootLogger.appenderRef.stdout.ref = STDOUT",
    ]
    for index, name in enumerate(info_loggers):
        lines += [f"logger.l{index}.name = {name}", f"logger.l{index}.level = INFO"]
    path.write_text("\n".join(lines) + "\n")


# --- one detached service ----------------------------------------------------------------------


class _Daemon:
    """One detached service process: preflight checks, launch, readiness probe, stop, status."""

    name: ClassVar[str]
    marker: ClassVar[str]  # a string its command line contains, to tell it from a recycled pid
    requires: _Daemon | None = None  # launched only once this one answers

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # to override
    @property
    def home(self) -> Path:
        raise NotImplementedError

    def ports(self) -> dict[int, str]:
        """The ports it listens on, each with the setting that moves it."""
        raise NotImplementedError

    def address(self) -> str:
        raise NotImplementedError

    def external(self) -> str | None:
        """Why the settings point at a service not run here (then it is not managed), else None."""
        return None

    def preflight(self) -> None:
        """Raise StackError when a prerequisite is missing."""

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        """Write its config files; the command line and the extra environment."""
        raise NotImplementedError

    def probe(self) -> str | None:
        """A short description when the service answers, None when it does not. Never raises."""
        raise NotImplementedError

    # shared
    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    def pid(self) -> int | None:
        return _live_pid(self.pid_file, self.marker)

    def launch(self) -> bool:
        """Start the process unless it already runs; True when this call started it."""
        pid = self.pid()
        if pid is not None:
            logger.info("%s already running (pid %d)", self.name, pid)
            return False
        self.preflight()
        for port, setting in self.ports().items():
            if _port_in_use(port):
                owner = _port_owner(port)
                raise StackError(
                    f"cannot start {self.name}: port {port} is already in use"
                    + (f" by {owner}" if owner else " by another process")
                    + f"; stop it or set {setting} to a free port"
                )
        self.home.mkdir(parents=True, exist_ok=True)
        argv, env = self.prepare()
        pid = _launch(argv, self.home, env, self.log_file)
        self.pid_file.write_text(f"{pid}\n")
        logger.info("%s starting (pid %d, log %s)", self.name, pid, self.log_file)
        return True

    def wait_ready(self, timeout_s: float) -> str:
        """Poll the probe until the service answers; StackError with the log tail otherwise."""
        started = time.monotonic()

        def answered() -> str | None:
            detail = self.probe()
            if detail is None and self.pid() is None:
                self._raise_exited()
            return detail

        detail = _poll(answered, timeout_s)
        if detail is None:
            raise StackError(
                f"{self.name} did not answer at {self.address()} within {timeout_s:.0f} s; "
                f"last lines of {self.log_file}:\n{_log_tail(self.log_file)}"
            )
        logger.info("%s ready in %.1f s: %s", self.name, time.monotonic() - started, detail)
        return detail

    def _raise_exited(self) -> None:
        pid = _read_pid(self.pid_file)
        child = _children.get(pid) if pid is not None else None
        if child is not None and child.poll() is None:  # never leave a half-started one behind
            _signal(child.pid, signal.SIGKILL)
            child.wait(timeout=_KILL_TIMEOUT_S)
        code = f" with exit code {child.returncode}" if child is not None else ""
        self.pid_file.unlink(missing_ok=True)
        raise StackError(
            f"{self.name} exited during start-up{code}; "
            f"last lines of {self.log_file}:\n{_log_tail(self.log_file)}"
        )

    def status(self) -> dict[str, Any]:
        pid = self.pid()
        if pid is None and self.external():
            detail = f"not managed here: {self.external()}"
        elif pid is not None:
            detail = self.probe() or "process runs but does not answer (starting, or unhealthy)"
        else:
            busy = [
                f"port {port} used by another process"
                for port in self.ports()
                if _port_in_use(port)
            ]
            detail = "stopped" + (f" ({', '.join(busy)})" if busy else "")
        return {
            "name": self.name,
            "running": pid is not None,
            "pid": pid,
            "address": self.address(),
            "detail": detail,
        }


def _start_all(daemons: list[_Daemon], timeout_s: float) -> None:
    """Launch the daemons together, then wait for each; on failure stop what this call launched."""
    launched: list[_Daemon] = []
    try:
        for daemon in daemons:
            if daemon.requires is None and daemon.launch():
                launched.append(daemon)
        for daemon in daemons:
            if daemon.requires is not None:
                daemon.requires.wait_ready(timeout_s)
                if daemon.launch():
                    launched.append(daemon)
        for daemon in daemons:
            daemon.wait_ready(timeout_s)
    except BaseException:
        try:
            _stop_all(launched)
        except StackError:
            logger.exception("could not clean up after a failed start")
        raise


def _stop_all(daemons: list[_Daemon]) -> None:
    """SIGTERM every running daemon's process group, wait, SIGKILL the stragglers; idempotent."""
    running: list[tuple[_Daemon, int, float]] = []
    for daemon in daemons:
        pid = daemon.pid()
        if pid is None:
            daemon.pid_file.unlink(missing_ok=True)
            continue
        logger.info("stopping %s (pid %d)", daemon.name, pid)
        _signal(pid, signal.SIGTERM)
        running.append((daemon, pid, time.monotonic()))
    stuck = []
    for daemon, pid, since in running:
        if _poll(lambda pid=pid: not _group_alive(pid), _STOP_TIMEOUT_S) is None:
            logger.warning(
                "%s (pid %d) ignored SIGTERM for %.0f s: killing it",
                daemon.name,
                pid,
                _STOP_TIMEOUT_S,
            )
            _signal(pid, signal.SIGKILL)
            if _poll(lambda pid=pid: not _group_alive(pid), _KILL_TIMEOUT_S) is None:
                stuck.append(f"{daemon.name} (pid {pid})")
                continue
        _children.pop(pid, None)
        daemon.pid_file.unlink(missing_ok=True)
        logger.info("%s stopped in %.1f s", daemon.name, time.monotonic() - since)
    if stuck:
        raise StackError(f"could not stop {', '.join(stuck)}")


# --- Kafka -------------------------------------------------------------------------------------


def _kafka_host_port(settings: Settings) -> tuple[str, int]:
    host, port = settings.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)
    return host, int(port)


def _kafka_is_local(settings: Settings) -> bool:
    return (
        "," not in settings.kafka_bootstrap_servers
        and _kafka_host_port(settings)[0] in _LOCAL_HOSTS
    )


@contextmanager
def _kafka_admin(settings: Settings, timeout_ms: int) -> Iterator[Any]:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        client_id="retail-stack",
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
    )
    try:
        yield admin
    finally:
        admin.close()


class _KafkaBroker(_Daemon):
    name = "kafka"
    marker = "kafka.Kafka"

    @property
    def home(self) -> Path:
        return self.settings.data_root / "kafka"

    @property
    def log_dir(self) -> Path:
        return self.home / "data"

    def ports(self) -> dict[int, str]:
        return {
            self.settings.kafka_port: "KAFKA_BOOTSTRAP_SERVERS",
            self.settings.kafka_controller_port: "KAFKA_CONTROLLER_PORT",
        }

    def address(self) -> str:
        return self.settings.kafka_bootstrap_servers

    def external(self) -> str | None:
        if _kafka_is_local(self.settings):
            return None
        servers = self.settings.kafka_bootstrap_servers
        return f"KAFKA_BOOTSTRAP_SERVERS={servers} is not one local address"

    def preflight(self) -> None:
        if self.external():
            raise StackError(f"{self.external()}; only a local broker can be started here")
        if self.settings.kafka_port == self.settings.kafka_controller_port:
            raise StackError(
                "KAFKA_CONTROLLER_PORT must differ from the port in KAFKA_BOOTSTRAP_SERVERS"
            )
        _java()
        if not any(KAFKA_JARS_DIR.glob("kafka_2.13-*.jar")):
            raise StackError(f"the Kafka jars are missing from {KAFKA_JARS_DIR}: run `make setup`")

    def _java_command(self, *args: str, jvm_options: tuple[str, ...] = ()) -> list[str]:
        return [
            _java(),
            *jvm_options,
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            f"{KAFKA_JARS_DIR}/*",
            *args,
        ]

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        port, controller = self.settings.kafka_port, self.settings.kafka_controller_port
        _write_log4j2(self.home / "log4j2.properties", ["kafka.server.KafkaRaftServer"])
        properties = self.home / "server.properties"
        properties.write_text(
            "# Written by common/stack.py at every start: change the settings, not this file.\n"
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.bootstrap.servers={_HOST}:{controller}\n"
            f"listeners=PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{controller}\n"
            f"advertised.listeners=PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{controller}\n"
            "controller.listener.names=CONTROLLER\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
            f"log.dirs={self.log_dir}\n"
            f"num.partitions={self.settings.kafka_partitions}\n"
            "offsets.topic.replication.factor=1\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\n"
        )
        if not (self.log_dir / "meta.properties").exists():
            self._format(properties)
        return self._java_command(
            "kafka.Kafka", str(properties), jvm_options=_KAFKA_JVM_OPTIONS
        ), {}

    def _format(self, properties: Path) -> None:
        """Format the KRaft log directory once, as a standalone controller of a new cluster."""
        uuid = self._run_tool("random-uuid").splitlines()[-1].strip()
        output = self._run_tool("format", "--standalone", "-t", uuid, "-c", str(properties))
        logger.info("kafka: %s", output.strip())

    def _run_tool(self, *args: str) -> str:
        command = self._java_command("kafka.tools.StorageTool", *args)
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise StackError(f"kafka-storage {args[0]} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def probe(self) -> str | None:
        from kafka.errors import KafkaError

        if not _answers(*_kafka_host_port(self.settings)):
            return None
        try:
            with _kafka_admin(self.settings, timeout_ms=3000) as admin:
                cluster = admin.describe_cluster()
        except (KafkaError, OSError) as exc:
            logger.debug("kafka not ready: %s", exc)
            return None
        brokers = [b for b in cluster.get("brokers", []) if not b.get("is_fenced")]
        if not brokers:
            return None
        return f"cluster {cluster.get('cluster_id')}, {len(brokers)} broker(s)"


# --- MLflow ------------------------------------------------------------------------------------


def _mlflow_is_local(settings: Settings) -> bool:
    parsed = urlparse(settings.mlflow_tracking_uri)
    return parsed.scheme in ("http", "https") and parsed.hostname in _LOCAL_HOSTS


class _MlflowServer(_Daemon):
    name = "mlflow"
    marker = "mlflow server"

    @property
    def home(self) -> Path:
        return self.settings.data_root / "mlflow"

    def ports(self) -> dict[int, str]:
        return {self.settings.mlflow_port: "MLFLOW_PORT"}

    def address(self) -> str:
        return f"http://{_HOST}:{self.settings.mlflow_port}"

    def external(self) -> str | None:
        if _mlflow_is_local(self.settings):
            return None
        return f"MLFLOW_TRACKING_URI={redact_url(self.settings.mlflow_tracking_uri)} is not a local server"

    def _executable(self) -> Path:
        beside = Path(sys.executable).parent / "mlflow"
        found = beside if beside.exists() else shutil.which("mlflow")
        if found is None:
            raise StackError(
                "the `mlflow` command is not installed in this environment: run `make setup`"
            )
        return Path(found)

    def preflight(self) -> None:
        self._executable()

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            str(self._executable()),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.home / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            (self.home / "artifacts").as_uri(),
            "--host",
            _HOST,
            "--port",
            str(self.settings.mlflow_port),
            "--workers",
            "1",
        ]
        # The GenAI job runner (huey consumers) is not used by this platform; skip its processes.
        return argv, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def probe(self) -> str | None:
        if _http_get(f"{self.address()}/health") != b"OK":
            return None
        return f"healthy; backend {self.home / 'mlflow.db'}, artifacts {self.home / 'artifacts'}"


# --- Spark standalone --------------------------------------------------------------------------


def _spark_home() -> Path:
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("pyspark is not installed in this environment: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


class _SparkDaemon(_Daemon):
    """What the master and the worker share: the wheel's spark-class, config and master state."""

    @property
    def home(self) -> Path:
        return self.settings.data_root / "spark"

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    def preflight(self) -> None:
        _java()
        if not (_spark_home() / "bin" / "spark-class").exists():
            raise StackError(
                f"spark-class is missing from {_spark_home() / 'bin'}: reinstall pyspark"
            )

    def _spark_class(self, main_class: str, *args: str) -> tuple[list[str], dict[str, str]]:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        _write_log4j2(self.conf_dir / "log4j2.properties", ["org.apache.spark.deploy"])
        defaults = self.conf_dir / "spark-defaults.conf"
        # No fixed REST port 6066. An application that sets no spark.cores.max takes one core, not
        # every core of the cluster: the two streaming jobs run side by side on the 2-core worker
        # (a third application, training or the batch, waits for one of them to stop).
        defaults.write_text("spark.master.rest.enabled false\nspark.deploy.defaultCores 1\n")
        spark_home = _spark_home()
        argv = [
            str(spark_home / "bin" / "spark-class"),
            main_class,
            "--properties-file",
            str(defaults),
            *args,
        ]
        env = {
            "SPARK_HOME": str(spark_home),
            "SPARK_CONF_DIR": str(self.conf_dir),
            "SPARK_LOCAL_IP": _HOST,
            "SPARK_DAEMON_MEMORY": _SPARK_DAEMON_MEMORY,
            "PYSPARK_PYTHON": sys.executable,
        }
        return argv, env

    @property
    def master_url(self) -> str:
        return f"spark://{_HOST}:{self.settings.spark_master_port}"

    def master_state(self) -> dict[str, Any] | None:
        """The master's JSON status page, or None when it does not answer."""
        body = _http_get(f"http://{_HOST}:{self.settings.spark_master_ui_port}/json/")
        try:
            return json.loads(body) if body else None
        except ValueError:
            return None


class _SparkMaster(_SparkDaemon):
    name = "spark-master"
    marker = "org.apache.spark.deploy.master.Master"

    def ports(self) -> dict[int, str]:
        return {
            self.settings.spark_master_port: "SPARK_MASTER_PORT",
            self.settings.spark_master_ui_port: "SPARK_MASTER_UI_PORT",
        }

    def address(self) -> str:
        return self.master_url

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        return self._spark_class(
            self.marker,
            "--host",
            _HOST,
            "--port",
            str(self.settings.spark_master_port),
            "--webui-port",
            str(self.settings.spark_master_ui_port),
        )

    def probe(self) -> str | None:
        state = self.master_state()
        if not state or state.get("status") != "ALIVE":
            return None
        ui = f"http://{_HOST}:{self.settings.spark_master_ui_port}"
        return f"ALIVE, UI {ui}, {state.get('aliveworkers', 0)} worker(s) alive"


class _SparkWorker(_SparkDaemon):
    name = "spark-worker"
    marker = "org.apache.spark.deploy.worker.Worker"

    def __init__(self, settings: Settings, master: _SparkMaster) -> None:
        super().__init__(settings)
        self.requires = master

    def ports(self) -> dict[int, str]:
        return {self.settings.spark_worker_ui_port: "SPARK_WORKER_UI_PORT"}

    def address(self) -> str:
        return f"http://{_HOST}:{self.settings.spark_worker_ui_port}"

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        return self._spark_class(
            self.marker,
            "--host",
            _HOST,
            "--cores",
            str(_SPARK_WORKER_CORES),
            "--memory",
            _SPARK_WORKER_MEMORY,
            "--webui-port",
            str(self.settings.spark_worker_ui_port),
            "--work-dir",
            str(self.home / "work"),
            self.master_url,
        )

    def probe(self) -> str | None:
        suffix = f":{self.settings.spark_worker_ui_port}"
        for worker in (self.master_state() or {}).get("workers", []):
            if worker.get("state") == "ALIVE" and str(worker.get("webuiaddress", "")).endswith(
                suffix
            ):
                cores, memory = worker.get("cores"), worker.get("memory")
                return f"ALIVE at {self.master_url}, {cores} cores, {memory} MB"
        return None


# --- public API --------------------------------------------------------------------------------


def _cluster(settings: Settings) -> list[_Daemon]:
    master = _SparkMaster(settings)
    return [master, _SparkWorker(settings, master)]


def start_kafka(settings: Settings) -> None:
    """Start the single-node KRaft broker (idempotent) and wait until it answers."""
    _start_all([_KafkaBroker(settings)], settings.service_start_timeout_s)


def stop_kafka(settings: Settings) -> None:
    """Stop the local broker if it runs (idempotent)."""
    _stop_all([_KafkaBroker(settings)])


def ensure_topics(settings: Settings, partitions: int | None = None) -> None:
    """Create the sales and inventory topics (replication factor 1) when missing; idempotent."""
    from kafka.errors import KafkaError

    count = partitions or settings.kafka_partitions
    wanted = [settings.sales_topic, settings.inventory_topic]
    try:
        with _kafka_admin(settings, timeout_ms=30_000) as admin:
            existing = {t["name"]: t for t in admin.describe_topics(wanted) if t["error_code"] == 0}
            missing = [topic for topic in wanted if topic not in existing]
            if missing:
                result = admin.create_topics(
                    {
                        topic: {"num_partitions": count, "replication_factor": 1}
                        for topic in missing
                    },
                    raise_errors=False,
                )
                failed = [
                    f"{t['name']}: {t['error_message'] or t['error_code']}"
                    for t in result["topics"]
                    if t["error_code"] not in (0, _TOPIC_ALREADY_EXISTS)
                ]
                if failed:
                    raise StackError(f"could not create topics: {'; '.join(failed)}")
                admin.wait_for_topics(missing, timeout_ms=30_000)
                logger.info("created topics %s with %d partitions", ", ".join(missing), count)
    except KafkaError as exc:
        raise StackError(f"Kafka at {settings.kafka_bootstrap_servers} failed: {exc}") from exc
    for name, topic in existing.items():
        found = len(topic["partitions"])
        if found != count:
            logger.warning(
                "topic %s exists with %d partitions (settings ask for %d)", name, found, count
            )


def start_mlflow(settings: Settings) -> None:
    """Start the MLflow tracking server (SQLite backend, proxied artifacts); idempotent."""
    _start_all([_MlflowServer(settings)], settings.service_start_timeout_s)


def stop_mlflow(settings: Settings) -> None:
    """Stop the local MLflow server if it runs (idempotent)."""
    _stop_all([_MlflowServer(settings)])


def start_spark_cluster(settings: Settings) -> None:
    """Start a Spark standalone master and one worker from the pyspark wheel; idempotent."""
    _start_all(_cluster(settings), settings.service_start_timeout_s)


def stop_spark_cluster(settings: Settings) -> None:
    """Stop the local Spark worker and master if they run (idempotent)."""
    _stop_all(list(reversed(_cluster(settings))))


def up(settings: Settings, cluster: bool = False) -> None:
    """Start Kafka with its topics and the MLflow server (and the Spark cluster), in parallel."""
    daemons: list[_Daemon] = [_KafkaBroker(settings), _MlflowServer(settings)]
    if cluster:
        daemons += _cluster(settings)
    for daemon in daemons:
        if daemon.external():
            logger.info("%s: %s, leaving it alone", daemon.name, daemon.external())
    if (
        _mlflow_is_local(settings)
        and urlparse(settings.mlflow_tracking_uri).port != settings.mlflow_port
    ):
        logger.warning(
            "MLFLOW_TRACKING_URI=%s does not use MLFLOW_PORT=%d: clients will not find the server",
            redact_url(settings.mlflow_tracking_uri),
            settings.mlflow_port,
        )
    daemons = [daemon for daemon in daemons if not daemon.external()]
    _start_all(daemons, settings.service_start_timeout_s)
    ensure_topics(settings)


def down(settings: Settings) -> None:
    """Stop every local service this project started (idempotent)."""
    _stop_all([*reversed(_cluster(settings)), _MlflowServer(settings), _KafkaBroker(settings)])


def status(settings: Settings) -> list[dict[str, Any]]:
    """One row per service: name, running, pid, address, detail."""
    return [
        daemon.status()
        for daemon in (_KafkaBroker(settings), _MlflowServer(settings), *_cluster(settings))
    ]
