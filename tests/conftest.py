"""Shared fixtures: private Redis servers on free ports, and the three services on localhost.

Everything here is real: redis-server processes, grpc.aio servers on port 0. Only the span
exporter is in-memory, which is how OpenTelemetry's SDK is meant to be tested.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import redis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streamchar.telemetry import setup_tracing

ROOT = Path(__file__).resolve().parent.parent
CHARACTER = ROOT / "streamchar" / "assets" / "character.png"

SPAN_EXPORTER = InMemorySpanExporter()
setup_tracing("streamchar-tests", exporters=[SPAN_EXPORTER])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def start_redis() -> RedisServer:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; `make test` installs it (Debian package redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="streamchar-redis-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port).ping()
            return RedisServer(port, proc)
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.process.terminate()
    server.process.wait(10)


@pytest.fixture
def character_png() -> bytes:
    return CHARACTER.read_bytes()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    SPAN_EXPORTER.clear()
    return SPAN_EXPORTER


@dataclass
class Stack:
    gateway_port: int
    renderer_port: int
    orchestrator_port: int
    redis: RedisServer

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"


@pytest_asyncio.fixture
async def stack(redis_server: RedisServer) -> AsyncIterator[Stack]:
    """The three services in this process's event loop, on free localhost ports, with real Redis."""
    from services.gateway.server import GatewayConfig
    from services.gateway.server import start as start_gateway
    from services.orchestrator.server import OrchestratorConfig
    from services.orchestrator.server import start as start_orchestrator
    from services.renderer.server import RendererConfig
    from services.renderer.server import start as start_renderer

    orch = await start_orchestrator(OrchestratorConfig(address="127.0.0.1:0", store_url=redis_server.url))
    rend = await start_renderer(RendererConfig(address="127.0.0.1:0", store_url=redis_server.url,
                                               orchestrator_address=f"127.0.0.1:{orch.port}"))
    gw = await start_gateway(GatewayConfig(address="127.0.0.1:0", store_url=redis_server.url,
                                           renderer_address=f"127.0.0.1:{rend.port}"))
    try:
        yield Stack(gw.port, rend.port, orch.port, redis_server)
    finally:
        for running in (gw, rend, orch):
            await running.stop(0.5)


def service_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCHAR_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(overrides)
    return env


def start_service_process(module: str, **env: str) -> subprocess.Popen:
    """A service as its own process, started the way its container starts it."""
    return subprocess.Popen([sys.executable, "-m", module], env=service_env(**env), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def wait_serving(address: str, timeout: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{address} not serving after {timeout}s")
