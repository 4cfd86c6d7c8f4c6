"""Start the whole stack locally as real processes: Redis (if none given) and the three services.

Each service runs as `python -m services.<name>` configured through STREAMCHAR_* environment
variables: the same entry point its container runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"service for {address} exited with code {process.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"{address} not serving after {timeout:.0f}s")


def child_env(**overrides: str) -> dict[str, str]:
    """This process's environment without STREAMCHAR_* settings, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCHAR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(overrides)
    return env


def start_redis() -> tuple[subprocess.Popen, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: install it (Debian: apt-get install redis-server) or pass --redis-url")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", tempfile.mkdtemp(prefix="streamchar-redis-")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@dataclass
class LocalStack:
    gateway: str
    renderer: str
    orchestrator: str
    store_url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    log_dir: Path | None = None

    def address(self, name: str) -> str:
        return {"gateway": self.gateway, "renderer": self.renderer, "orchestrator": self.orchestrator}[name]

    def start_service(self, name: str) -> subprocess.Popen:
        """Start (or restart) one service on its address; returns once it reports SERVING."""
        out = open(self.log_dir / f"{name}.log", "ab") if self.log_dir else subprocess.DEVNULL
        proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"],
                                env={**self.env, "STREAMCHAR_ADDRESS": self.address(name)}, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
        self.processes[name] = proc
        wait_serving(self.address(name), 120.0, proc)
        return proc

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_stack(store_url: str | None = None, checkpoint: str = "", log_dir: Path | None = None,
                extra_env: dict[str, str] | None = None, http_address: str = "") -> LocalStack:
    """Redis (unless `store_url`) and the three services; the gateway serves its page on `http_address`
    ("host:port", "" none)."""
    ports = {name: free_port() for name in ("gateway", "renderer", "orchestrator")}
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    redis_proc = None
    if store_url is None:
        redis_proc, store_url = start_redis()
    env = child_env(**{
        "STREAMCHAR_STORE_URL": store_url, "STREAMCHAR_CHECKPOINT": checkpoint,
        "STREAMCHAR_ORCHESTRATOR_ADDRESS": addr["orchestrator"], "STREAMCHAR_RENDERER_ADDRESS": addr["renderer"],
        "STREAMCHAR_HTTP_ADDRESS": http_address, **(extra_env or {}),
    })
    stack = LocalStack(addr["gateway"], addr["renderer"], addr["orchestrator"], store_url, env=env, log_dir=log_dir)
    if redis_proc is not None:
        stack.processes["redis"] = redis_proc
    try:
        for name in ("orchestrator", "renderer", "gateway"):
            stack.start_service(name)
    except BaseException:
        stack.stop()
        raise
    return stack


@dataclass
class VLLMServer:
    """A vLLM server for the orchestrator's vLLM backend, as a local process (its own session)."""

    url: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> VLLMServer:
        """Start the server; returns once it lists its model (about 20 s on the 2-core CPU here)."""
        import httpx

        with open(self.log_path, "ab") as out:
            # Offline and without usage reports: nothing outside this machine is contacted.
            env = child_env(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
            self.process = subprocess.Popen(self.command, env=env, cwd=ROOT, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with code {self.process.returncode}; log: {self.log_path}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"vLLM server not ready after {timeout:.0f}s; log: {self.log_path}")

    def engine_core_pid(self) -> int:
        """The server's engine process (vLLM v1 runs the model loop in a child, `VLLM::EngineCore`)."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid, rest = stat.read_text().split(" ", 1)
                ppid = int(rest.rsplit(")", 1)[1].split()[1])
                cmdline = (stat.parent / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if self.process is not None and ppid == self.process.pid and b"EngineCore" in cmdline:
                return int(pid)
        raise RuntimeError("no vLLM engine core process found")

    def kill(self) -> None:
        """Kill the whole server at once (what a crash looks like to its clients)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def vllm_server(checkpoint: str = "", port: int = 0, venv: str | Path | None = None,
                log_dir: Path | None = None) -> VLLMServer:
    """A (not yet started) vLLM server for `checkpoint`'s orchestrator directory on CPU."""
    from services.orchestrator.vllm_backend import vllm_python, vllm_server_command
    from streamchar.models.bundle import load_orchestrator_decoding

    python = vllm_python(venv)
    if not python.exists():
        raise FileNotFoundError(f"no vLLM environment at {python.parent.parent} (make vllm-env creates it)")
    lm_dir, *_ = load_orchestrator_decoding(checkpoint or None)
    port = port or free_port()
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="streamchar-vllm-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    return VLLMServer(f"http://127.0.0.1:{port}", vllm_server_command(python, lm_dir, "127.0.0.1", port),
                      log_dir / "vllm.log")
