"""Shared fixtures: private Redis servers on free ports, the three services on localhost, and a small
rendered corpus with its DiT latent cache (for the DiT and distillation trainers).

Everything here is real: redis-server processes, grpc.aio servers on port 0. Only the span
exporter is in-memory, which is how OpenTelemetry's SDK is meant to be tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import redis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streamchar.localstack import start_redis
from streamchar.telemetry import setup_tracing

ROOT = Path(__file__).resolve().parent.parent
CHARACTER = ROOT / "streamchar" / "assets" / "character.png"

SPAN_EXPORTER = InMemorySpanExporter()
setup_tracing("streamchar-tests", exporters=[SPAN_EXPORTER])


@dataclass
class RedisServer:
    process: subprocess.Popen
    url: str

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port for this test run."""
    server = RedisServer(*start_redis())
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


# torchrun(module, config, overrides, timeout=300) -> the run's stdout + stderr; fails the test on a non-zero exit.
Torchrun = Callable[..., str]


@pytest.fixture
def torchrun() -> Torchrun:
    """Runs a trainer module under ``torchrun --standalone --nproc_per_node 2`` (gloo, one thread per rank)."""

    def run(module: str, config: Path, overrides: list[str], timeout: float = 300) -> str:
        launcher = Path(sys.executable).parent / "torchrun"
        args = [str(launcher), "--standalone", "--nproc_per_node", "2", "-m", module, "--config", str(config),
                *(a for o in ["run.progress=false", "run.backend=gloo", *overrides] for a in ("--set", o))]
        done = subprocess.run(args, cwd=ROOT, env={**os.environ, "LOG_LEVEL": "INFO", "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr

    return run


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


@pytest.fixture(scope="session")
def dit_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small rendered corpus: 6 train and 2 test clips, one shard each."""
    from training.data.corpus import CorpusConfig, write_corpus

    root = tmp_path_factory.mktemp("dit-corpus")
    write_corpus(root, CorpusConfig(train_samples=6, val_samples=0, test_samples=2, samples_per_shard=6),
                 progress=False)
    return root


@pytest.fixture(scope="session")
def dit_cache(dit_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its DiT latent cache under the shipped codecs (train and test)."""
    from training.pipelines.dit_data import load_codecs, precompute

    root = tmp_path_factory.mktemp("dit-cache")
    codecs = load_codecs()
    for split in ("train", "test"):
        precompute(dit_corpus, root, split, codecs, progress=False)
    return root
