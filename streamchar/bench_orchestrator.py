"""`streamchar bench-orchestrator`: the orchestrator's two LM backends side by side, embedded vs vLLM.

One invocation starts Redis, a vLLM server (the `.venv-vllm` environment, serving the checkpoint's
orchestrator directory) and two orchestrator services as processes, `backend=embedded` and
`backend=vllm`, then drives both with the same sessions over gRPC: 1 and then 4 concurrent
sessions, each sending the whole text and pulling every chunk as fast as it comes (not paced to
playback). Rounds alternate between the backends after one warm-up round each, so both see the
same machine load; figures are medians over rounds.

- time to first condition: from sending the text and the first pull to that chunk's conditions;
- tokens/s: LM tokens decoded (two per video frame) per second of the round, all sessions together;
  real time needs 2 x 25 = 50 tokens/s per session;
- identical: sessions of the vLLM backend whose units and pointers equal the embedded backend's (all
  sessions speak the same text, so with greedy decoding all should, batched by vLLM or not).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from streamchar.localstack import ROOT, child_env, free_port, start_redis, vllm_server, wait_serving
from streamchar.session import SessionMeta
from streamchar.state.store import RedisSessionStore
from streamchar.timebase import TimeBase
from streamchar.v1 import orchestrator_pb2, orchestrator_pb2_grpc

TB = TimeBase()
BACKENDS = ("embedded", "vllm")


async def one_session(address: str, store_url: str, text: str) -> tuple[float, int, float, float, list[tuple]]:
    """(seconds to first conditions, frames, start, end, conditions) of one session, pulled chunk after chunk."""
    store = RedisSessionStore(store_url, 600)
    meta = SessionMeta.new(np.zeros((8, 8, 3), np.uint8))
    await meta.create(store)
    await store.close()
    async with grpc.aio.insecure_channel(address) as channel:
        call = orchestrator_pb2_grpc.OrchestratorStub(channel).Orchestrate()
        await call.write(orchestrator_pb2.OrchestrateRequest(
            start=orchestrator_pb2.OrchestrateStart(session_id=meta.session_id)))
        await call.read()
        start = time.perf_counter()
        await call.write(orchestrator_pb2.OrchestrateRequest(text={"text": text, "offset": 0}))
        await call.write(orchestrator_pb2.OrchestrateRequest(end_of_text={}))
        first, conditions = 0.0, []
        while True:
            await call.write(orchestrator_pb2.OrchestrateRequest(pull=orchestrator_pb2.Pull(chunk_index=len(conditions))))
            response = await call.read()
            if response.WhichOneof("event") != "conditions":
                break
            if not conditions:
                first = time.perf_counter() - start
            c = response.conditions
            conditions.append((tuple(c.units), c.pointer_start, c.pointer_end))
        end = time.perf_counter()
        call.cancel()
    return first, len(conditions) * TB.frames_per_chunk, start, end, conditions


async def one_round(address: str, store_url: str, text: str, sessions: int) -> tuple[float, float, list[list[tuple]]]:
    """(median time to first condition, tokens/s of all sessions, each session's conditions) of `sessions`
    concurrent sessions."""
    results = await asyncio.gather(*(one_session(address, store_url, text) for _ in range(sessions)))
    wall = max(r[3] for r in results) - min(r[2] for r in results)
    return statistics.median(r[0] for r in results), 2 * sum(r[1] for r in results) / wall, [r[4] for r in results]


def run_bench_orchestrator(args: argparse.Namespace) -> int:
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="streamchar-bench-orch-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    redis_proc, store_url = start_redis()
    processes: list[subprocess.Popen] = [redis_proc]
    vllm = vllm_server(args.checkpoint, venv=args.vllm_venv or None, log_dir=log_dir)
    try:
        print(f"starting vLLM (log: {vllm.log_path}) and two orchestrators ...", flush=True)
        vllm.start()
        addresses = {}
        for backend in BACKENDS:
            address = f"127.0.0.1:{free_port()}"
            env = child_env(STREAMCHAR_ADDRESS=address, STREAMCHAR_STORE_URL=store_url, STREAMCHAR_BACKEND=backend,
                            STREAMCHAR_VLLM__URL=vllm.url, STREAMCHAR_CHECKPOINT=args.checkpoint,
                            STREAMCHAR_LOG_LEVEL="WARNING")
            with open(log_dir / f"orchestrator-{backend}.log", "ab") as out:
                processes.append(subprocess.Popen([sys.executable, "-m", "services.orchestrator"], env=env, cwd=ROOT,
                                                  stdout=out, stderr=subprocess.STDOUT))
            wait_serving(address, 120.0, processes[-1])
            addresses[backend] = address
        print(f"text: {len(args.text)} characters; {args.rounds} measured rounds per backend and concurrency "
              f"after one warm-up; real time is {2 * TB.fps} tokens/s per session")
        table = asyncio.run(_measure(addresses, store_url, args))
    finally:
        vllm.stop()
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.wait(10)
    print("\n| backend | sessions | time to first condition (median) | tokens/s, all sessions (median) "
          "| tokens/s per session |\n|---|---|---|---|---|")
    for (backend, sessions), (ttfc, tps) in table.items():
        print(f"| {backend} | {sessions} | {ttfc * 1000:.1f} ms | {tps:.0f} | {tps / sessions:.0f} |")
    for sessions in args.sessions:
        (e_ttfc, e_tps), (v_ttfc, v_tps) = table[("embedded", sessions)], table[("vllm", sessions)]
        print(f"vLLM / embedded, {sessions} session(s): time to first condition {v_ttfc / e_ttfc:.2f}, "
              f"tokens/s {v_tps / e_tps:.2f}")
    return 0


async def _measure(addresses: dict[str, str], store_url: str,
                   args: argparse.Namespace) -> dict[tuple[str, int], tuple[float, float]]:
    table = {}
    reference: list[tuple] | None = None
    for sessions in args.sessions:
        rounds: dict[str, list[tuple[float, float]]] = {b: [] for b in BACKENDS}
        identical, compared = 0, 0
        for i in range(args.rounds + 1):
            for backend in BACKENDS:
                ttfc, tps, outputs = await one_round(addresses[backend], store_url, args.text, sessions)
                if backend == "embedded":
                    reference = reference or outputs[0]
                else:
                    identical += sum(out == reference for out in outputs)
                    compared += len(outputs)
                if i:  # round 0 warms up
                    rounds[backend].append((ttfc, tps))
        for backend in BACKENDS:
            table[(backend, sessions)] = (statistics.median(r[0] for r in rounds[backend]),
                                          statistics.median(r[1] for r in rounds[backend]))
            print(f"  {backend:<8} {sessions} session(s): " + ", ".join(
                f"{ttfc * 1000:.0f} ms / {tps:.0f} tok/s" for ttfc, tps in rounds[backend]), flush=True)
        print(f"  identical: {identical}/{compared} vLLM sessions equal the embedded decode", flush=True)
    return table
