"""Starts real `meterd` agents (with the embedded AWS emulator) for the SDK tests.

The binary comes from $METERD_BIN (default: <repo>/target/debug/meterd).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

import meterd

REPO = Path(__file__).resolve().parents[2]
METERD_BIN = os.environ.get("METERD_BIN", str(REPO / "target" / "debug" / "meterd"))
DEMO_ACCOUNT = "111122223333"
DEMO_LICENSE = "arn:aws:license-manager::111122223333:license:l-demo-demo"


DEMO_PRODUCTS = """[products.demo]
identity = "license"
dimensions = ["api_calls", "storage_gb_hours"]
"""


class Agent:
    """One `meterd run --simulate --speed 1 --config FILE` process; restartable on the same port and data dir."""

    def __init__(self, workdir: Path, late_usage: str = "reject", products: str = DEMO_PRODUCTS) -> None:
        self.workdir = workdir
        self.unix_socket = workdir / "meterd.sock"
        self.config = workdir / "meterd.toml"
        self.config.write_text(
            f"""
[server]
listen = "127.0.0.1:0"
unix_socket = "{self.unix_socket}"

[storage]
data_dir = "{workdir / "data"}"

[pipeline]
late_usage = "{late_usage}"

{products}"""
        )
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(os.environ)
        if self.port is not None:
            env["METERD_LISTEN"] = self.target  # a restart keeps the port, so clients reconnect to it
        env.setdefault("METERD_LOG", "warn")
        self.proc = subprocess.Popen(
            [METERD_BIN, "run", "--simulate", "--speed", "1", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "agent.log", "a"),  # noqa: SIM115 (kept open by the child)
            text=True,
            env=env,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=30)
        except queue.Empty:
            self.proc.kill()
            raise RuntimeError(f"meterd did not get ready; see {self.workdir / 'agent.log'}") from None
        assert line.startswith("meterd ready"), line
        fields = dict(f.split("=", 1) for f in line.split()[2:])
        self.port = int(fields["tcp"].rsplit(":", 1)[1])
        self.emulator = fields.get("emulator")

    def end_agreement(self, agreement_id: str) -> None:
        """Tells the embedded emulator the agreement ended, so DescribeAgreement confirms an end event."""
        import json
        import urllib.request

        assert self.emulator, "no embedded emulator (run --simulate)"
        req = urllib.request.Request(
            f"{self.emulator}/_emulator/agreements",
            data=json.dumps({"agreement_id": agreement_id, "status": "TERMINATED"}).encode(),
            headers={"Content-Type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def agent(tmp_path_factory: pytest.TempPathFactory):
    a = Agent(tmp_path_factory.mktemp("agent"))
    yield a
    a.stop()


@pytest.fixture
def own_agent(tmp_path: Path):
    """An agent only this test uses (for kill, restart and stop)."""
    a = Agent(tmp_path)
    yield a
    a.stop()


@pytest.fixture
def client(agent: Agent):
    with meterd.Client(agent.target) as c:
        yield c


@pytest.fixture
def tenant() -> str:
    """A tenant id no other test uses, so report rows can be attributed."""
    return f"t-{uuid.uuid4().hex[:12]}"


def recorded_for(client: meterd.Client, tenant: str) -> Decimal:
    """Sum of the report's recorded amounts for one tenant (exact)."""
    return sum((Decimal(r.recorded) for r in client.report().rows if r.customer == f"tenant:{tenant}"), Decimal(0))
