"""A local cluster of real parts: three ``vcstream serve`` processes on loopback sharing one
PostgreSQL database, HAProxy in front (deploy/haproxy/haproxy.cfg.in), coturn for relayed media and
Prometheus scraping the replicas (deploy/prometheus/cluster.yml). Everything runs from a temporary
folder on free ports and is stopped, whatever happens, when ``running_cluster`` exits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ports import free_port
from turn_harness import Coturn, running_coturn
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_DIR = ROOT / "deploy" / "haproxy"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
TURN_SECRET = "vcstream-cluster-turn-secret"
#: how long a replica may take from its start to /readyz 200: ~3 s alone (passthrough engine), but
#: three start at once and a shared 2-core machine under load was seen to need over 30 s
READY_WITHIN_S = 90.0


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@dataclass
class Replica:
    """One ``vcstream serve`` process with its own data folder (its own disk, like a pod)."""

    name: str
    port: int
    folder: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    #: a test sent it SIGTERM: it drains, then exits on its own
    drained: bool = False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def log(self) -> Path:
        return self.folder / "serve.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.drained = False
        command = [sys.executable, "-m", "vcstream.cli", "serve"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if not self.alive:
            code = None if self.process is None else self.process.returncode
            raise AssertionError(f"replica {self.name} exited ({code}): {_log_tail(self.log)}")
        return http_get(f"{self.base}/readyz")[0] == 200

    def wait_ready(self) -> None:
        what = f"replica {self.name} answered /readyz 200"
        wait_until(self.ready, READY_WITHIN_S, what, state=lambda: _log_tail(self.log, 500))

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.drained = self.drained or sig == signal.SIGTERM
        self.process.send_signal(sig)

    def wait_exit(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        """Gone at once (the end of the test module or a failure: no drain wanted)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed ``name{label="value",...}`` (labels sorted) or ``name``."""
        status, body = http_get(f"{self.base}/metrics")
        assert status == 200, f"replica {self.name} /metrics answered {status}"
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def active_sessions(self) -> int:
        return int(self.metrics()["vcstream_active_sessions"])

    def sessions_started(self) -> int:
        return int(self.metrics()["vcstream_sessions_started_total"])


@dataclass
class Balancer:
    """HAProxy, with its runtime API socket to read what it thinks of each replica."""

    port: int
    socket_path: Path
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as runtime:
            runtime.settimeout(2)
            runtime.connect(str(self.socket_path))
            runtime.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := runtime.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self, backend: str) -> dict[str, dict[str, str]]:
        """``show stat`` of one backend's servers: name -> columns (``status``, ``scur``...)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row
            for row in rows
            if row.get("pxname") == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }


@dataclass
class Prometheus:
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (an AssertionError for a query Prometheus refuses)."""
        url = f"{self.base}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        status, body = http_get(url, timeout_s=5)
        reply = json.loads(body or b"{}")
        assert status == 200 and reply.get("status") == "success", (expression, status, reply)
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result


@dataclass
class Cluster:
    replicas: list[Replica]
    balancer: Balancer
    prometheus: Prometheus
    coturn: Coturn
    #: call places per replica, and the drain grace each replica is given
    capacity: int
    grace_s: float
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def replica_up_in_balancer(self, replica: Replica) -> bool:
        return self.balancer.servers("signalling")[replica.name]["status"] == "UP"

    def ensure_all_up(self) -> None:
        """Restart any replica a test stopped, and wait until every one is ready and the balancer
        sends calls to it again."""
        for replica in self.replicas:
            if replica.alive and replica.drained:  # let it finish draining rather than cut it
                replica.wait_exit(self.grace_s + 10)
            if not replica.alive:
                replica.start()
        for replica in self.replicas:
            replica.wait_ready()
            wait_until(
                lambda r=replica: self.replica_up_in_balancer(r),  # type: ignore[misc]
                10,
                f"HAProxy marked {replica.name} UP",
                state=lambda: self.balancer.servers("signalling"),
            )

    def sessions(self) -> dict[str, int]:
        """Active sessions of each live replica, by name."""
        return {r.name: r.active_sessions() for r in self.replicas if r.alive}


def upgrade_database(database_url: str) -> None:
    """The init step before replicas start on a shared database (``vcstream db upgrade``)."""
    command = [sys.executable, "-m", "vcstream.cli", "db", "upgrade", "--database-url", database_url]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def render_haproxy(folder: Path, bind: str, capacity: int, replicas: list[Replica]) -> Path:
    """deploy/haproxy/haproxy.cfg.in with this cluster's replicas, checked by ``haproxy -c``."""
    servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port}" for r in replicas)
    fields = {
        "{{BIND}}": bind,
        "{{CAPACITY}}": str(capacity),
        "{{SERVERS}}": servers,
        "{{ERRORS}}": str(HAPROXY_DIR / "errors"),
        "{{RUNTIME_SOCKET}}": str(folder / "haproxy.sock"),
    }
    text = (HAPROXY_DIR / "haproxy.cfg.in").read_text()
    for key, value in fields.items():
        text = text.replace(key, value)
    assert "{{" not in text, "a field of the HAProxy template was left unfilled"
    config = folder / "haproxy.cfg"
    config.write_text(text)
    command = ["haproxy", "-c", "-f", str(config)]
    check = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    return config


def write_prometheus_config(folder: Path, replicas: list[Replica]) -> Path:
    """deploy/prometheus/cluster.yml in ``folder`` with the replicas as its file-discovered targets."""
    shutil.copy(PROMETHEUS_DIR / "cluster.yml", folder / "cluster.yml")
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", folder / "alerts.yml")  # cluster.yml loads them
    targets = [{"targets": [f"127.0.0.1:{r.port}" for r in replicas], "labels": {"cluster": "local"}}]
    (folder / "vcstream-targets.json").write_text(json.dumps(targets))
    return folder / "cluster.yml"


def _started(stack: ExitStack, command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    stack.callback(stop)
    return process


@contextmanager
def running_cluster(
    folder: Path,
    database_url: str,
    *,
    replicas: int = 3,
    capacity: int = 2,
    grace_s: float = 5.0,
    engine: str = "passthrough",
) -> Iterator[Cluster]:
    for tool in ("haproxy", "prometheus"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} is missing: run scripts/setup.sh (it installs Debian's {tool})")
    upgrade_database(database_url)
    with ExitStack() as stack:
        coturn = stack.enter_context(
            running_coturn(_made(folder / "coturn"), TURN_SECRET, "vcstream.cluster")
        )
        members = []
        for index in range(replicas):
            port, home = free_port(), _made(folder / f"r{index}")
            env = {
                **os.environ,
                "VCSTREAM_HOST": "127.0.0.1",
                "VCSTREAM_PORT": str(port),
                "VCSTREAM_ENGINE": engine,
                "VCSTREAM_MAX_SESSIONS": str(capacity),
                "VCSTREAM_DATA_DIR": str(home),
                "VCSTREAM_DATABASE_URL": database_url,
                "VCSTREAM_SHUTDOWN_GRACE_S": str(grace_s),
                "VCSTREAM_TURN_URLS": coturn.url,
                "VCSTREAM_TURN_SECRET": TURN_SECRET,
                "VCSTREAM_WEBRTC_LATENCY_MS": "20",
                "VCSTREAM_TRUSTED_PROXIES": "127.0.0.1",
            }
            members.append(Replica(f"r{index}", port, home, env))
        stack.callback(lambda: [r.stop() for r in members])
        for replica in members:
            replica.start()

        balancer_home = _made(folder / "haproxy")
        balancer = Balancer(free_port(), balancer_home / "haproxy.sock", balancer_home / "haproxy.log")
        config = render_haproxy(balancer_home, f"127.0.0.1:{balancer.port}", capacity, members)
        haproxy = _started(stack, ["haproxy", "-W", "-db", "-f", str(config)], balancer.log)

        prometheus_home = _made(folder / "prometheus")
        prometheus = Prometheus(free_port(), prometheus_home / "prometheus.log")
        prometheus_command = [
            "prometheus",
            f"--config.file={write_prometheus_config(prometheus_home, members)}",
            f"--storage.tsdb.path={prometheus_home / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus.port}",
        ]
        scraper = _started(stack, prometheus_command, prometheus.log)

        def running(process: subprocess.Popen[bytes], log: Path) -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{process.args[0]} exited ({process.returncode}): {_log_tail(log)}")
            return True

        scraping = f"{prometheus.base}/-/ready"
        wait_until(
            lambda: running(scraper, prometheus.log) and http_get(scraping)[0] == 200, 30, "Prometheus up"
        )
        opened = balancer.socket_path.exists
        wait_until(lambda: running(haproxy, balancer.log) and opened(), 30, "HAProxy's runtime API open")
        cluster = Cluster(members, balancer, prometheus, coturn, capacity, grace_s, [haproxy, scraper])
        cluster.ensure_all_up()  # replicas ready, and UP in the balancer
        pages = f"{balancer.base}/healthz"
        wait_until(
            lambda: http_get(pages)[0] == 200, 15, "HAProxy serves pages", state=lambda: http_get(pages)
        )
        yield cluster


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
