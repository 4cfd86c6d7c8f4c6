"""`streamchar` command line: say, serve, client, bench, and the corpus / training / evaluation commands."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from tqdm import tqdm

from streamchar.errors import InvalidInput
from streamchar.logutil import setup_logging
from streamchar.timebase import TimeBase

DEFAULT_CHARACTER = Path(__file__).resolve().parent / "assets" / "character.png"
BENCH_TEXT = (
    "Good morning! Today we will talk about streaming characters. A client sends text, token by token, "
    "and the character speaks it while we watch, chunk after chunk, for as long as the conversation lasts. "
    "Each chunk is three hundred and twenty milliseconds of video and audio, generated jointly. "
    "How fast can we go on two CPU cores? Let us measure it, side by side, and report the medians. "
)


def _read_character(path: str | None) -> bytes:
    p = Path(path) if path else DEFAULT_CHARACTER
    try:
        return p.read_bytes()
    except OSError as e:
        raise SystemExit(f"cannot read character image {p}: {e.strerror}") from None


def cmd_say(args: argparse.Namespace) -> int:
    import torch

    from streamchar.pipeline import Pipeline, PipelineConfig

    torch.set_num_threads(args.threads)
    image = _read_character(args.character)
    try:
        pipeline = Pipeline(PipelineConfig(checkpoint=args.checkpoint, dit=args.dit, steps=args.steps,
                                           guidance=args.guidance, audio_temperature=args.audio_temperature,
                                           video_temperature=args.video_temperature,
                                           video_prior_only=args.video_prior_only,
                                           audio_prior_only=args.audio_prior_only,
                                           audio_guidance=args.audio_guidance, seed=args.seed))
    except ValueError as e:  # a sampler setting this DiT cannot honour
        raise SystemExit(f"streamchar say: {e}") from None
    bar = tqdm(total=len(args.text), unit="char", desc="speaking", disable=args.quiet)

    def progress(chunk: int, pointer: int, total: int) -> None:
        bar.update(pointer - bar.n)
        bar.set_postfix(chunk=chunk)

    async def run() -> tuple[bytes, object]:
        try:
            return await pipeline.speak_to_mp4(args.text, image, args.voice, progress)
        finally:
            await pipeline.close()

    try:
        data, result = asyncio.run(run())
    except InvalidInput as e:  # e.g. a voice the orchestrator LM does not speak
        raise SystemExit(f"streamchar say: {e}") from None
    bar.close()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    tb = TimeBase()
    n = len(result.chunks)
    print(f"wrote {out}: {n} chunks, {n * tb.chunk_seconds:.2f} s of video+audio in {result.wall_seconds:.2f} s "
          f"({n * tb.chunk_seconds / max(result.wall_seconds, 1e-9):.1f}x real time)"
          + ("" if result.trained else " — UNTRAINED joint DiT / orchestrator LM (random init): the character and "
             "voice are noise until they are trained"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from streamchar.localstack import start_stack

    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    vllm, extra_env = None, {}
    if args.vllm:
        from streamchar.localstack import vllm_server

        vllm = vllm_server(args.checkpoint, log_dir=log_dir)
        print(f"starting vLLM for the orchestrator (log: {vllm.log_path}) ...", flush=True)
        vllm.start()
        extra_env = {"STREAMCHAR_BACKEND": "vllm", "STREAMCHAR_VLLM__URL": vllm.url}
    try:
        stack = start_stack(args.redis_url, args.checkpoint, log_dir, extra_env, http_address=args.http)
    except BaseException:
        if vllm is not None:
            vllm.stop()
        raise
    page = f"page         http://{args.http}/\n" if args.http else ""
    print(f"{page}gateway      {stack.gateway}\nrenderer     {stack.renderer}\norchestrator {stack.orchestrator}"
          + (f" (LM on vLLM at {vllm.url})" if vllm else "") + "\n"
          f"store        {stack.store_url}\nlogs         {log_dir}/\nCtrl-C stops the stack.", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            for name, proc in stack.processes.items():
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        if vllm is not None:
            vllm.stop()
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    from streamchar.client import Client, GatewayError

    image = _read_character(args.character)
    text = args.text.split(" ") if args.words else [args.text]
    deltas = [w + " " for w in text[:-1]] + [text[-1]] if args.words else text
    bar = tqdm(unit="chunk", desc="streaming", disable=args.quiet)

    def on_event(event) -> None:
        if event.WhichOneof("event") == "progress":
            bar.update(1)
            bar.set_postfix(pointer=event.progress.pointer, latency=f"{event.progress.latency_seconds * 1000:.0f}ms")

    try:
        with Client(args.gateway) as client:
            result = client.speak(iter(deltas), image, on_event=on_event, voice=args.voice, realtime=args.realtime,
                                  raw=args.raw)
    except GatewayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.raw:
        import numpy as np

        frames = b"".join(c.frames_rgb24 for c in result.raw_chunks)
        pcm = b"".join(c.pcm_s16le for c in result.raw_chunks)
        np.savez(out, frames=np.frombuffer(frames, np.uint8), pcm_s16le=np.frombuffer(pcm, "<i2"))
    else:
        out.write_bytes(result.media)
    print(f"wrote {out}: session {result.session_id}, {len(result.chunk_indices)} chunks")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from streamchar.bench import run_bench

    return run_bench(args)


def cmd_bench_orchestrator(args: argparse.Namespace) -> int:
    from streamchar.bench_orchestrator import run_bench_orchestrator

    return run_bench_orchestrator(args)


def cmd_corpus(args: argparse.Namespace) -> int:
    from training.data.corpus import SPLITS, CorpusConfig, write_corpus

    config = CorpusConfig(seed=args.seed, image_size=args.size, train_samples=args.train_samples,
                          val_samples=args.val_samples, test_samples=args.test_samples,
                          speech_only=args.speech_only, utterances=args.utterances)
    started = time.perf_counter()
    stats = write_corpus(Path(args.out), config, progress=not args.quiet, workers=args.workers)
    wall = time.perf_counter() - started
    for split in SPLITS:
        st = stats[split]
        print(f"{split:<5} {st.samples:6d} samples  {st.seconds / 3600:7.3f} h")
    seconds = sum(st.seconds for st in stats.values())
    generated = sum(st.wall_seconds for st in stats.values())
    print(f"total {sum(st.samples for st in stats.values()):6d} samples  {seconds / 3600:7.3f} h  in {wall:.1f} s"
          + (f"; generation speed {sum(st.seconds for st in stats.values() if st.wall_seconds) / generated:.1f} "
             "s of corpus per wall second" if generated else " (all shards already present)"))
    return 0


def cmd_train_codecs(args: argparse.Namespace) -> int:
    from training.codecs import CodecTrainConfig, train_codecs

    config = CodecTrainConfig(steps=args.steps, seed=args.seed, units=args.units, num_units=args.num_units)
    info = train_codecs(Path(args.corpus), Path(args.out), config, progress=not args.quiet)
    print(f"wrote video codec, audio codec and {args.units} speech units to {args.out} "
          f"(video codec {info['video_seconds']:.0f} s, final loss {info['final_loss']:.4f}; "
          f"units {info['units_seconds']:.0f} s)")
    return 0


def cmd_fit_units(args: argparse.Namespace) -> int:
    from training.codecs import CodecTrainConfig, fit_bundle_units

    config = CodecTrainConfig(seed=args.seed, units=args.units, num_units=args.num_units)
    units, seconds = fit_bundle_units(Path(args.corpus), Path(args.out), config)
    print(f"wrote {units.config.num_units} {args.units} units to {Path(args.out) / 'units'} in {seconds:.0f} s; "
          "retrain the orchestrator LM and the DiT on them")
    return 0


def cmd_eval_codecs(args: argparse.Namespace) -> int:
    from streamchar.models.bundle import default_checkpoint
    from training.codecs import evaluate_codecs

    r = evaluate_codecs(Path(args.corpus), Path(args.checkpoint or default_checkpoint()), args.split)
    print(f"{r['split']} split: {r['samples']} samples, {r['frames']} frames\n"
          f"  video codec PSNR       {r['video_psnr_db']:.2f} dB\n"
          f"  audio codec mel L1     {r['audio_mel_l1']:.3f} (natural-log mel, round trip through Griffin-Lim)\n"
          f"  unit purity            {r['units_purity']:.3f} (majority-phoneme baseline "
          f"{r['units_majority_phoneme_baseline']:.3f}; {r['units_units_used']} units used)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import shlex

    import torch

    from training.data.corpus import load_manifest
    from training.eval.harness import Evaluators, evaluate, run_meta, write_report
    from training.eval.protocols import long_stream_items, short_clip_items
    from training.eval.systems import parse_system

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        systems = [parse_system(spec) for spec in args.system]
    except ValueError as e:
        raise SystemExit(f"--system: {e}") from None
    protocols = set(args.protocol or ("short", "long"))
    corpus = Path(args.corpus)
    try:
        manifest = load_manifest(corpus)
    except FileNotFoundError:
        raise SystemExit(f"no corpus at {corpus}: generate it first with `streamchar corpus --out {corpus}`") from None
    if args.split != "test" and "long" in protocols:
        raise SystemExit("--split applies to the short-clip protocol only: add --protocol short")
    short = short_clip_items(corpus, limit=args.short_limit, split=args.split) if "short" in protocols else []
    long = (long_stream_items(corpus, sessions=args.long_sessions, minutes=args.long_minutes,
                              words_per_second=args.words_per_second) if "long" in protocols else [])
    results = evaluate(systems, short, long, Evaluators.load(), window_seconds=args.window_seconds,
                       progress=not args.quiet, concurrency=args.concurrency)
    argv = ["streamchar", "evaluate", *sys.argv[2:]] if args.command_line is None else shlex.split(args.command_line)
    meta = run_meta(shlex.join(argv), corpus, manifest.seed, args.window_seconds, time.perf_counter() - t0)
    meta["split"] = args.split
    path = write_report(results, args.out, meta)
    print(path.read_text())
    return 0


def cmd_check_evaluators(args: argparse.Namespace) -> int:
    import shlex

    import torch

    from training.data.corpus import load_manifest
    from training.eval.harness import Evaluators, check_evaluators, run_meta, write_evaluator_report

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    corpus = Path(args.corpus)
    try:
        manifest = load_manifest(corpus)
    except FileNotFoundError:
        raise SystemExit(f"no corpus at {corpus}: generate it first with `streamchar corpus --out {corpus}`") from None
    checks = check_evaluators(corpus, Evaluators.load(), progress=not args.quiet)
    meta = run_meta(shlex.join(["streamchar", "check-evaluators", *sys.argv[2:]]), corpus, manifest.seed, 0.0,
                    time.perf_counter() - t0)
    print(write_evaluator_report(checks, args.out, meta).read_text())
    return 0


def cmd_samples(args: argparse.Namespace) -> int:
    import torch

    from training.eval.samples import render_samples

    torch.set_num_threads(args.threads)
    videos = render_samples(args.out, args.count, args.checkpoint, args.steps, args.guidance, dit=args.dit,
                            audio_temperature=args.audio_temperature, audio_guidance=args.audio_guidance,
                            video_prior_only=args.video_prior_only, audio_prior_only=args.audio_prior_only)
    for v in videos:
        print(f"{v.path} ({len(v.frames)} frames): {v.text}")
    print(f"{Path(args.out) / 'contact_sheet.png'}")
    return 0


def _sampler_steps(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"sampler steps must be >= 1, got {value}")
    return value


def _sampler_float(check: str, what: str):
    """An argparse type: a float that ``streamchar.models.sampler.<check>`` accepts, else `what` and the value."""

    def parse(text: str) -> float:
        from streamchar.models import sampler

        value = float(text)
        try:
            return getattr(sampler, check)(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {value:g}") from None

    return parse


_audio_temperature = _sampler_float("check_audio_temperature", "the audio temperature must be in [0, 2]")
_video_temperature = _sampler_float("check_audio_temperature", "the video temperature must be in [0, 2]")
_guidance = _sampler_float("check_guidance", "a CFG scale must be in [0, 10]")


VOICE_HELP = "the accent to speak in: one of the orchestrator LM's (en-us, en-gb, en-gb-scotland, ...); default: its own"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamchar", description="Real-time streaming talking characters.")
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    say = sub.add_parser("say", help="speak a text to an MP4, in-process with the bundled models")
    say.add_argument("text")
    say.add_argument("--character", help="reference image of the character (default: the bundled one)")
    say.add_argument("-o", "--output", default="out/say.mp4")
    say.add_argument("--voice", default="", help=VOICE_HELP)
    say.add_argument("--checkpoint", default="", help="bundle directory (default: the shipped tiny bundle)")
    say.add_argument("--dit", default="dit", help="the bundle's DiT: dit (the distilled student, 4 steps), "
                     "dit-stage1, or teacher (with --steps 32 --guidance 3 --audio-temperature 0 --audio-guidance 1)")
    say.add_argument("--steps", type=_sampler_steps, default=4)
    say.add_argument("--guidance", type=_guidance, default=1.0)
    say.add_argument("--audio-temperature", type=_audio_temperature, default=1.0, help="scales the audio's starting noise")
    say.add_argument("--video-temperature", type=_video_temperature, default=1.0, help="scales the video's starting noise")
    say.add_argument("--audio-guidance", type=_guidance, default=None, help="the audio's own CFG scale (default: --guidance)")
    say.add_argument("--video-prior-only", action="store_true",
                     help="the video is the DiT's video prior mean (the teacher has one)")
    say.add_argument("--audio-prior-only", action="store_true",
                     help="the audio is the DiT's audio prior mean (the teacher has one)")
    say.add_argument("--seed", type=int, default=1)
    say.add_argument("--threads", type=int, default=2)
    say.add_argument("-q", "--quiet", action="store_true")
    say.set_defaults(func=cmd_say)

    serve = sub.add_parser("serve", help="run Redis (unless --redis-url) and the three services locally")
    serve.add_argument("--redis-url")
    serve.add_argument("--checkpoint", default="")
    serve.add_argument("--log-dir", default="out/logs")
    serve.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT",
                       help="where the gateway serves the browser page ('' for none)")
    serve.add_argument("--vllm", action="store_true",
                       help="also start a vLLM server (.venv-vllm, `make vllm-env`) and run the orchestrator's LM on it")
    serve.set_defaults(func=cmd_serve)

    client = sub.add_parser("client", help="speak a text through a running gateway, writing the stream to a file")
    client.add_argument("text")
    client.add_argument("--gateway", default="127.0.0.1:50050")
    client.add_argument("--character")
    client.add_argument("-o", "--output", default="out/client.mp4")
    client.add_argument("--voice", default="", help=VOICE_HELP)
    client.add_argument("--words", action="store_true", help="send the text word by word, like a chat model")
    client.add_argument("--realtime", action="store_true", help="pace generation to playback")
    client.add_argument("--raw", action="store_true", help="raw RGB frames + PCM (.npz) instead of fMP4")
    client.add_argument("-q", "--quiet", action="store_true")
    client.set_defaults(func=cmd_client)

    bench = sub.add_parser("bench", help="per-chunk latency and real-time factor, in-process and through the services")
    bench.add_argument("--text", default=BENCH_TEXT)
    bench.add_argument("--dit", default="dit", help="the bundle's DiT (dit, dit-stage1, teacher)")
    bench.add_argument("--steps", type=_sampler_steps, default=4)
    bench.add_argument("--guidance", type=_guidance, default=1.0)
    bench.add_argument("--versus", default="teacher:32:3", help="compare mode: the other DiT, DIT:STEPS:GUIDANCE")
    bench.add_argument("--repeats", type=int, default=3, help="sessions per mode; medians over all chunks")
    bench.add_argument("--checkpoint", default="")
    bench.add_argument("--mode", choices=("both", "inprocess", "services", "compare"), default="both")
    bench.set_defaults(func=cmd_bench)

    bench_orch = sub.add_parser("bench-orchestrator", help="orchestrator LM backends side by side: embedded vs vLLM")
    bench_orch.add_argument("--text", default=BENCH_TEXT)
    bench_orch.add_argument("--sessions", type=int, nargs="+", default=[1, 4], help="concurrent sessions")
    bench_orch.add_argument("--rounds", type=int, default=3, help="measured rounds per backend and concurrency")
    bench_orch.add_argument("--checkpoint", default="")
    bench_orch.add_argument("--vllm-venv", default="", help="vLLM environment (default: .venv-vllm)")
    bench_orch.add_argument("--log-dir", default="")
    bench_orch.set_defaults(func=cmd_bench_orchestrator)

    corpus = sub.add_parser("corpus", help="generate the synthetic corpus (train/val/test shards)")
    corpus.add_argument("--out", default="data/corpus")
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--size", type=int, default=64, help="frame size in pixels")
    corpus.add_argument("--train-samples", type=int, default=900)
    corpus.add_argument("--val-samples", type=int, default=60)
    corpus.add_argument("--test-samples", type=int, default=120)
    corpus.add_argument("--speech-only", action="store_true",
                        help="transcripts, speech and alignments without rendered frames (orchestrator LM data)")
    corpus.add_argument("--utterances", type=int, default=1,
                        help="utterances spoken as one sample (long samples for the orchestrator LM's slides)")
    corpus.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes writing shards at once (default: one per core)")
    corpus.add_argument("-q", "--quiet", action="store_true")
    corpus.set_defaults(func=cmd_corpus)

    train_codecs = sub.add_parser("train-codecs", help="train the video codec, calibrate audio, fit speech units")
    train_codecs.add_argument("--corpus", default="data/corpus")
    train_codecs.add_argument("--out", default="streamchar/checkpoints/tiny")
    train_codecs.add_argument("--steps", type=int, default=3000)
    train_codecs.add_argument("--units", choices=("phoneme", "kmeans"), default="phoneme")
    train_codecs.add_argument("--num-units", type=int, default=128, help="kmeans units only")
    train_codecs.add_argument("--seed", type=int, default=0)
    train_codecs.add_argument("-q", "--quiet", action="store_true")
    train_codecs.set_defaults(func=cmd_train_codecs)

    fit_units = sub.add_parser("fit-units", help="refit the speech-unit tokenizer alone (then retrain LM and DiT)")
    fit_units.add_argument("--corpus", default="data/corpus")
    fit_units.add_argument("--out", default="streamchar/checkpoints/tiny")
    fit_units.add_argument("--units", choices=("phoneme", "kmeans"), default="phoneme")
    fit_units.add_argument("--num-units", type=int, default=128, help="kmeans units only")
    fit_units.add_argument("--seed", type=int, default=0)
    fit_units.set_defaults(func=cmd_fit_units)

    eval_codecs = sub.add_parser("eval-codecs", help="codec PSNR, audio mel distance and unit purity on held-out data")
    eval_codecs.add_argument("--corpus", default="data/corpus")
    eval_codecs.add_argument("--checkpoint", default="")
    eval_codecs.add_argument("--split", default="test", choices=("val", "test"))
    eval_codecs.set_defaults(func=cmd_eval_codecs)

    ev = sub.add_parser("evaluate", help="score systems (ground truth, pipeline checkpoints) on the evaluation "
                        "protocols; writes report.md, results.json and PNG plots")
    ev.add_argument("--system", action="append", required=True,
                    help="'ground-truth', 'codecs[,checkpoint=DIR]' (ground truth through the codecs) or "
                    "'pipeline[,label=NAME][,checkpoint=DIR][,steps=N][,KEY=VALUE...]' "
                    "(voice=NAME: the sessions' accent, voice=item: each clip's own; KEY=VALUE sets STREAMCHAR_KEY for "
                    "the services); repeat for several rows")
    ev.add_argument("--protocol", action="append", choices=("short", "long"), default=None,
                    help="short clips and/or long-horizon streams (default: both)")
    ev.add_argument("--corpus", default="data/corpus")
    ev.add_argument("--out", default="out/eval")
    ev.add_argument("--short-limit", type=int, default=None, help="at most this many short clips")
    ev.add_argument("--split", choices=("test", "val"), default="test",
                    help="the short clips' split: test (the report), or val (to choose settings on)")
    ev.add_argument("--long-sessions", type=int, default=3)
    ev.add_argument("--long-minutes", type=float, default=5.0)
    ev.add_argument("--words-per-second", type=float, default=15.0, help="pace of the long streams' text")
    ev.add_argument("--window-seconds", type=float, default=30.0)
    ev.add_argument("--concurrency", type=int, default=1,
                    help="short clips run through a pipeline at once (batched by its renderer)")
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    ev.add_argument("-q", "--quiet", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    samples = sub.add_parser("samples", help="sample videos of held-out characters (MP4s + a PNG contact sheet)")
    samples.add_argument("--out", default="out/samples")
    samples.add_argument("--count", type=int, default=3)
    samples.add_argument("--checkpoint", default="")
    samples.add_argument("--dit", default="dit", help="the bundle's DiT (dit, dit-stage1, teacher)")
    samples.add_argument("--steps", type=_sampler_steps, default=4)
    samples.add_argument("--guidance", type=_guidance, default=1.0)
    samples.add_argument("--audio-temperature", type=_audio_temperature, default=1.0, help="scales the audio's starting noise")
    samples.add_argument("--audio-guidance", type=_guidance, default=None, help="the audio's own CFG scale (default: --guidance)")
    samples.add_argument("--video-prior-only", action="store_true", help="the video is the DiT's video prior mean")
    samples.add_argument("--audio-prior-only", action="store_true", help="the audio is the DiT's audio prior mean")
    samples.add_argument("--threads", type=int, default=2)
    samples.set_defaults(func=cmd_samples)

    chk = sub.add_parser("check-evaluators", help="the evaluators' acceptance checks on the held-out test split "
                         "(recognizer PER, sync offsets, identity ROC-AUC, seam ratio, Fréchet sanity)")
    chk.add_argument("--corpus", default="data/corpus")
    chk.add_argument("--out", default="out/evaluators.md")
    chk.add_argument("--threads", type=int, default=2)
    chk.add_argument("-q", "--quiet", action="store_true")
    chk.set_defaults(func=cmd_check_evaluators)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    sys.exit(args.func(args))
