"""Health, reflection, raw output, metrics, a dependency down, graceful shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from streamchar.client import AsyncClient, Unavailable
from streamchar.localstack import ROOT, child_env, free_port, wait_serving
from streamchar.timebase import TimeBase

TB = TimeBase()


@pytest.mark.asyncio
@pytest.mark.parametrize("service", ["Gateway", "Renderer", "Orchestrator"])
async def test_health_and_reflection(stack, service):
    port = {"Gateway": stack.gateway_port, "Renderer": stack.renderer_port,
            "Orchestrator": stack.orchestrator_port}[service]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=f"streamchar.v1.{service}"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name async for r in call for s in r.list_services_response.service]
        assert f"streamchar.v1.{service}" in names and "grpc.health.v1.Health" in names


@pytest.mark.asyncio
async def test_raw_output_and_metrics(stack, character_png):
    def count(service: str, stage: str) -> float:
        return REGISTRY.get_sample_value("streamchar_chunk_seconds_count", {"service": service, "stage": stage}) or 0

    before = count("renderer", "render")
    async with AsyncClient(stack.gateway) as client:
        result = await client.speak("Raw frames and samples, please.", character_png, raw=True)
    n = len(result.chunk_indices)
    assert result.media == b"" and len(result.raw_chunks) == n
    for k, chunk in enumerate(result.raw_chunks):
        assert chunk.chunk_index == k and chunk.pts_us == k * 320_000 and chunk.duration_us == 320_000
        frames = np.frombuffer(chunk.frames_rgb24, np.uint8).reshape(chunk.num_frames, chunk.height, chunk.width, 3)
        assert frames.shape == (TB.frames_per_chunk, 64, 64, 3)
        assert len(chunk.pcm_s16le) == 2 * TB.samples_per_chunk and chunk.sample_rate == TB.sample_rate
    assert count("renderer", "render") - before == n
    assert count("gateway", "mux") >= n


@pytest.mark.asyncio
async def test_store_down_is_unavailable_with_a_readable_message(character_png):
    from services.gateway.server import GatewayConfig, start

    dead = f"redis://127.0.0.1:{free_port()}/0"
    gw = await start(GatewayConfig(address="127.0.0.1:0", store_url=dead, renderer_address="127.0.0.1:1"))
    try:
        async with AsyncClient(f"127.0.0.1:{gw.port}") as client:
            with pytest.raises(Unavailable, match="session store unavailable"):
                await client.speak("Is anybody there?", character_png)
    finally:
        await gw.stop(0.5)


@pytest.mark.asyncio
async def test_renderer_down_is_unavailable(redis_server, character_png):
    from services.gateway.server import GatewayConfig, start

    gw = await start(GatewayConfig(address="127.0.0.1:0", store_url=redis_server.url,
                                   renderer_address=f"127.0.0.1:{free_port()}", renderer_retries=2,
                                   renderer_retry_seconds=0.05))
    try:
        async with AsyncClient(f"127.0.0.1:{gw.port}") as client:
            with pytest.raises(Unavailable, match="renderer|connect"):
                await client.speak("Hello?", character_png)
    finally:
        await gw.stop(0.5)


def test_sigterm_shuts_a_service_down_gracefully(redis_server):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.orchestrator"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=child_env(STREAMCHAR_ADDRESS=f"127.0.0.1:{port}", STREAMCHAR_STORE_URL=redis_server.url,
                                          STREAMCHAR_GRACE_SECONDS="1"))
    try:
        wait_serving(f"127.0.0.1:{port}", 120, proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "shutting down" in out


def test_bad_configuration_is_a_clear_error(redis_server):
    proc = subprocess.run([sys.executable, "-m", "services.renderer"], cwd=ROOT, capture_output=True, text=True,
                          env=child_env(STREAMCHAR_STEPS="four"), timeout=120)
    assert proc.returncode != 0 and "steps: expected int, got 'four'" in proc.stderr


def test_a_dit_the_bundle_lacks_is_a_clear_error_at_start(redis_server):
    proc = subprocess.run([sys.executable, "-m", "services.renderer"], cwd=ROOT, capture_output=True, text=True,
                          env=child_env(STREAMCHAR_DIT="dit-nonesuch"), timeout=120)
    assert proc.returncode != 0 and "no DiT 'dit-nonesuch'" in proc.stderr
    assert "teacher" in proc.stderr  # it names the DiTs the bundle does hold


@pytest.mark.parametrize(("device", "says"), [
    ("cuda", "no usable CUDA device"),  # this CPU machine; on a GPU host the same setting renders there
    ("tpu", "device must be cpu or cuda"),
])
def test_a_device_the_renderer_cannot_use_is_a_clear_error_at_start(device, says):
    if device == "cuda" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = subprocess.run([sys.executable, "-m", "services.renderer"], cwd=ROOT, capture_output=True, text=True,
                          env=child_env(STREAMCHAR_DEVICE=device, STREAMCHAR_ADDRESS=f"127.0.0.1:{free_port()}"),
                          timeout=120)
    assert proc.returncode != 0 and says in proc.stderr
