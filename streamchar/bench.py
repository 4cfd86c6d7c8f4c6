"""`streamchar bench`: per-chunk latency and real-time factor, in-process and through the services.

Both modes run the same text, with the same models and sampler steps, in one invocation, after a
warm-up session each; figures are medians over all chunks of all measured sessions. In-process
times each stage of a chunk (conditions, denoise+decode, mux). Through the services (three
processes + Redis on localhost, generation not paced), it records the renderer's compute per chunk
and the interval between chunks arriving at the client, which is what a viewer's stream needs to
keep up with.

``--mode compare`` measures two DiTs of the bundle in one run, in-process: the renderer's compute per
chunk of ``--dit`` at ``--steps``/``--guidance`` (default: the distilled student, 4 steps) against
``--versus`` at its own sampler (default: the teacher, 32 steps, guidance 3). Sessions alternate
between the two (A, B, A, B, ...) so that a noisy shared machine slows both alike; the ratio is of
the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from streamchar.timebase import TimeBase

TB = TimeBase()


def _ms(values: list[float]) -> str:
    q = statistics.quantiles(values, n=10) if len(values) >= 2 else values * 9
    return f"median {statistics.median(values) * 1000:6.1f} ms   p90 {q[-1] * 1000:6.1f} ms"


def bench_inprocess(args: argparse.Namespace, image: bytes) -> dict[str, list[float]]:
    import torch

    from streamchar.pipeline import Pipeline, PipelineConfig

    torch.set_num_threads(2)
    pipeline = Pipeline(PipelineConfig(checkpoint=args.checkpoint, dit=args.dit, steps=args.steps,
                                       guidance=args.guidance))
    stats = _empty_stats()

    async def run() -> None:
        try:
            for i in range(args.repeats + 1):
                await _session(pipeline, args.text, image, stats if i else _empty_stats())  # the first: warm-up
        finally:
            await pipeline.close()

    asyncio.run(run())
    return stats


def _empty_stats() -> dict[str, list[float]]:
    return {"conditions": [], "render": [], "mux": [], "interval": []}


async def _session(pipeline, text: str, image: bytes, stats: dict[str, list[float]]) -> None:
    done: list[float] = []
    _, result = await pipeline.speak_to_mp4(text, image, progress=lambda *_: done.append(time.perf_counter()))
    for c in result.chunks:
        stats["conditions"].append(c.orchestrate_seconds)
        stats["render"].append(c.render_seconds)
        stats["mux"].append(c.mux_seconds)
    stats["interval"] += [b - a for a, b in zip(done, done[1:])]


def parse_sampler(spec: str) -> tuple[str, int, float]:
    """``DIT:STEPS:GUIDANCE`` (e.g. ``teacher:32:3``) -> (dit, steps, guidance)."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"--versus takes DIT:STEPS:GUIDANCE, e.g. teacher:32:3, got {spec!r}")
    return parts[0], int(parts[1]), float(parts[2])


def bench_compare(args: argparse.Namespace, image: bytes) -> None:
    import torch

    from streamchar.pipeline import Pipeline, PipelineConfig

    torch.set_num_threads(2)
    other = parse_sampler(args.versus)
    runs = {(args.dit, args.steps, args.guidance): None, other: None}
    pipelines = {key: Pipeline(PipelineConfig(checkpoint=args.checkpoint, dit=key[0], steps=key[1], guidance=key[2]))
                 for key in runs}
    stats = {key: _empty_stats() for key in runs}

    async def run() -> None:
        try:
            for i in range(args.repeats + 1):
                for key, pipeline in pipelines.items():  # alternating: both see the same machine
                    await _session(pipeline, args.text, image, stats[key] if i else _empty_stats())
        finally:
            for pipeline in pipelines.values():
                await pipeline.close()

    asyncio.run(run())
    budget = TB.chunk_seconds
    medians = {}
    print(f"in-process, renderer compute per chunk (denoise + decode), {args.repeats} sessions each, alternating")
    for (dit, steps, guidance), s in stats.items():
        medians[dit, steps, guidance] = statistics.median(s["render"])
        print(f"  {dit:<11} {steps:3d} steps, guidance {guidance:g}: {_ms(s['render'])}   "
              f"({len(s['render'])} chunks; render / playback {medians[dit, steps, guidance] / budget:.3f})")
    (a, b) = medians.values()
    print(f"  ratio {other[0]} / {args.dit} = {b / a:.2f}x  ({args.dit} is {b / a:.1f} times cheaper per chunk)")


def bench_services(args: argparse.Namespace, image: bytes) -> dict[str, list[float]]:
    from streamchar.client import Client
    from streamchar.localstack import start_stack

    stack = start_stack(checkpoint=args.checkpoint, extra_env={
        "STREAMCHAR_STEPS": str(args.steps), "STREAMCHAR_GUIDANCE": str(args.guidance), "STREAMCHAR_DIT": args.dit,
        "STREAMCHAR_LOG_LEVEL": "WARNING"})
    stats: dict[str, list[float]] = {"render": [], "render+mux": [], "interval": []}
    try:
        with Client(stack.gateway) as client:
            for i in range(args.repeats + 1):
                arrivals: list[float] = []
                progress = []
                for event in client.events(args.text, image):
                    if event.WhichOneof("event") == "segment" and not event.segment.final_flush:
                        arrivals.append(time.perf_counter())
                    elif event.WhichOneof("event") == "progress":
                        progress.append(event.progress)
                if i == 0:
                    continue
                stats["render"] += [p.render_seconds for p in progress]
                stats["render+mux"] += [p.latency_seconds for p in progress]
                stats["interval"] += [b - a for a, b in zip(arrivals, arrivals[1:])]
    finally:
        stack.stop()
    return stats


def run_bench(args: argparse.Namespace) -> int:
    from streamchar.cli import DEFAULT_CHARACTER

    image = DEFAULT_CHARACTER.read_bytes()
    budget = TB.chunk_seconds
    if args.mode == "compare":
        bench_compare(args, image)
        return 0
    print(f"chunk = {TB.frames_per_chunk} frames = {budget * 1000:.0f} ms of playback; DiT {args.dit}, "
          f"{args.steps}-step sampler, guidance {args.guidance:g}; {args.repeats} measured sessions per mode after "
          "one warm-up")
    inproc = services = None
    if args.mode in ("both", "inprocess"):
        inproc = bench_inprocess(args, image)
        interval = statistics.median(inproc["interval"])
        print(f"in-process  ({len(inproc['render'])} chunks; conditions, then render, then mux, per chunk)")
        for k in ("conditions", "render", "mux"):
            print(f"  {k:<11} {_ms(inproc[k])}")
        print(f"  interval    {_ms(inproc['interval'])}   (between finished chunks)")
        print(f"  render / playback = {statistics.median(inproc['render']) / budget:.3f}   "
              f"chunk interval / playback = {interval / budget:.3f}   real-time factor = {budget / interval:.2f}x")
    if args.mode in ("both", "services"):
        services = bench_services(args, image)
        interval = statistics.median(services["interval"])
        print(f"services    ({len(services['render'])} chunks; gateway+renderer+orchestrator processes, Redis)")
        print(f"  render      {_ms(services['render'])}   (renderer: load state, denoise, decode)")
        print(f"  render+mux  {_ms(services['render+mux'])}")
        print(f"  interval    {_ms(services['interval'])}   (between chunks arriving at the client)")
        print(f"  render / playback = {statistics.median(services['render']) / budget:.3f}   "
              f"chunk interval / playback = {interval / budget:.3f}   real-time factor = {budget / interval:.2f}x")
    if inproc and services:
        render_ratio = statistics.median(services["render"]) / statistics.median(inproc["render"])
        interval_ratio = statistics.median(services["interval"]) / statistics.median(inproc["interval"])
        print(f"services / in-process: render {render_ratio:.2f}, chunk interval {interval_ratio:.2f}")
    return 0
