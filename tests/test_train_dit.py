"""DiT teacher training: the latent cache, inference-exact chunk conditions, the flow-matching loss, and
the distributed trainer (two gloo ranks under torchrun: identical weights, checkpoint, export, resume)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from streamchar.engine.rendering import ChunkJob, RenderEngine, RendererModels
from streamchar.models.bundle import load_renderer
from streamchar.models.joint_dit import PRESETS, JointAudioVideoDiT, JointDiTConfig
from streamchar.models.sampler import FlowMatchingSampler
from streamchar.timebase import TimeBase
from training.data.characters import reference_image
from training.data.corpus import ShardDataset
from training.objectives.flow_matching import (
    FlowMatchingConfig,
    NoiseDraw,
    draw_noise,
    flow_matching_loss,
    interpolate,
    mouth_mask,
    velocity_target,
)
from training.pipelines.dit_data import (
    ChunkSampler,
    ChunkSamplingConfig,
    Codecs,
    LatentCache,
    load_codecs,
    precompute,
    split_dir,
    to_unit_range,
)
from training.units import sample_units

ROOT = Path(__file__).resolve().parent.parent
TB = TimeBase()
Fc, Fm, m = TB.frames_per_chunk, TB.motion_frames, TB.mel_per_frame


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: a second thread only adds synchronisation (and contention on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def codecs() -> Codecs:
    return load_codecs()


@pytest.fixture(scope="module")
def corpus(dit_corpus: Path) -> Path:
    return dit_corpus  # conftest.py: 6 train and 2 test clips


@pytest.fixture(scope="module")
def cache(dit_cache: Path) -> Path:
    return dit_cache


@pytest.fixture(scope="module")
def latents(cache: Path) -> LatentCache:
    return LatentCache.load(cache, "train")


def dit_config(codecs: Codecs, **overrides: object) -> JointDiTConfig:
    return dataclasses.replace(PRESETS["tiny"], num_units=codecs.units.config.num_units, **overrides)


# ---- cache ----------------------------------------------------------------------------------------

def test_cache_holds_the_codecs_latents_and_is_idempotent(corpus: Path, cache: Path, codecs: Codecs,
                                                          latents: LatentCache) -> None:
    sample = ShardDataset(corpus, "train")[1]
    first, n = int(latents.frame_offset[1]), sample.num_frames
    assert latents.sample_ids[1] == sample.sample_id and int(latents.num_frames[1]) == n
    with torch.no_grad():
        video = codecs.video.encode(to_unit_range(sample.frames))  # [F, C, h, w]
        audio = codecs.audio.encode(torch.from_numpy(np.ascontiguousarray(sample.waveform))[None])  # [1, F*m, Ca]
        ref = codecs.video.encode(to_unit_range(reference_image(sample.character, 64)[None]))[0]
    torch.testing.assert_close(latents.video[first:first + n].float(), video, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(latents.audio[first:first + n].flatten(0, 1).float(), audio[0], atol=2e-2, rtol=1e-2)
    assert torch.equal(latents.units[first:first + n], sample_units(codecs.units, codecs.audio, sample, audio[0]))
    torch.testing.assert_close(latents.ref[1].float(), ref, atol=2e-2, rtol=1e-2)
    # The reference is the neutral render, not a frame of the clip.
    assert (latents.ref[1].float() - video[0]).abs().mean() > 0.05

    shard = split_dir(cache, "train") / "shard-00000.safetensors"
    before = shard.stat().st_mtime_ns
    again = precompute(corpus, cache, "train", codecs, progress=False)
    assert (again.encoded_shards, again.kept_shards, again.samples) == (0, 1, 6)
    assert shard.stat().st_mtime_ns == before


# ---- batches --------------------------------------------------------------------------------------

class GroundTruthDiT(nn.Module):
    """Returns noise - x0 for the next ground-truth chunk, so a 1-step sampler renders exactly that chunk;
    records the conditions the render engine passes it."""

    def __init__(self, config: JointDiTConfig, chunks: list[tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.config = config
        self.chunks = chunks
        self.seen: list[dict[str, Tensor]] = []

    @property
    def null_unit(self) -> int:
        return self.config.null_unit

    def forward(self, video_noisy: Tensor, audio_noisy: Tensor, t: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        video, audio = self.chunks[len(self.seen)]
        self.seen.append(cond)
        return video_noisy - video[None], audio_noisy - audio[None]


def test_batches_carry_exactly_the_renderers_conditions(latents: LatentCache, corpus: Path, codecs: Codecs) -> None:
    """A session rendered by the real RenderEngine (with a model that reproduces the ground truth) passes
    the DiT, at every chunk, the conditions the batch function builds for that chunk."""
    config = dit_config(codecs)
    sampler = ChunkSampler(latents, config.silence_unit, ChunkSamplingConfig(), TB)
    s = 1
    chunks = int(latents.num_frames[s]) // Fc
    assert chunks >= 3
    truth = [sampler.gather(torch.tensor([s]), torch.tensor([k])) for k in range(chunks)]
    model = GroundTruthDiT(config, [(b.video[0], b.audio[0]) for b in truth])
    models = RendererModels(model, codecs.video, codecs.audio, TB, trained=True)  # type: ignore[arg-type]
    reference = reference_image(ShardDataset(corpus, "train")[s].character, 64)
    state: dict[str, np.ndarray | None] = dict.fromkeys(("ref", "sv", "sa", "mv", "ma"))
    with ThreadPoolExecutor(1) as executor:
        engine = RenderEngine(models, steps=1, guidance=1.0, max_batch=1, executor=executor)
        for k, batch in enumerate(truth):
            job = ChunkJob(units=batch.cond.units[0].tolist(), seed=k, ref_image=reference, ref_latent=state["ref"],
                           sink_video=state["sv"], sink_audio=state["sa"], motion_video=state["mv"],
                           motion_audio=state["ma"], previous_units=truth[k - 1].cond.units[0].tolist() if k else None,
                           next_units=batch.cond.next_units[0].tolist())
            out = engine.render_batch([job])[0]
            np.testing.assert_allclose(out.video_latents, batch.video[0].numpy(), atol=1e-5)
            if k == 0:
                state.update(ref=out.ref_latent, sv=out.video_latents, sa=out.audio_latents)
            state.update(mv=out.video_latents[-Fm:], ma=out.audio_latents[-Fm * m:])

            seen, built = model.seen[k], dataclasses.asdict(batch.cond)
            assert set(seen) == set(built)
            for name, value in built.items():
                assert seen[name].shape == value.shape and seen[name].dtype == value.dtype, name
                tol = 2e-2 if name == "ref_video" else 1e-5  # the cache stores the reference in float16
                torch.testing.assert_close(seen[name], value, atol=tol, rtol=0, msg=name)

    # Spelled out: chunk 0 has no context, later chunks have chunk 0 as sink and the last Fm frames as motion;
    # a chunk's next units are the next chunk's (known, evaluation draws), silence past the clip's end.
    for k in range(chunks - 1):
        assert torch.equal(truth[k].cond.next_units, truth[k + 1].cond.units) and truth[k].cond.has_next.all()
    past = torch.arange(chunks * Fc + Fc)[-Fc:] >= int(latents.num_frames[s])
    assert (truth[-1].cond.next_units[0][past] == config.silence_unit).all()
    assert not truth[0].cond.has_sink.item() and not truth[0].cond.has_motion.item()
    assert truth[0].cond.sink_video.abs().max() == 0 and truth[0].cond.motion_audio.abs().max() == 0
    k = 2
    assert truth[k].cond.has_sink.item() and truth[k].cond.has_motion.item()
    assert torch.equal(truth[k].cond.sink_video, truth[0].video)
    assert torch.equal(truth[k].cond.sink_audio, truth[0].audio)
    assert torch.equal(truth[k].cond.motion_video, truth[k - 1].video[:, -Fm:])
    assert torch.equal(truth[k].cond.motion_audio, truth[k - 1].audio[:, -Fm * m:])
    assert torch.equal(truth[k].cond.previous_units, truth[k - 1].cond.units) and truth[0].cond.previous_units.max() == 0
    first = int(latents.frame_offset[s]) + k * Fc
    assert torch.equal(truth[k].video[0], latents.video[first:first + Fc].float())


def test_draws_mix_first_chunks_and_silence_units(latents: LatentCache, codecs: Codecs) -> None:
    silence = dit_config(codecs).silence_unit
    sampler = ChunkSampler(latents, silence, ChunkSamplingConfig(first_chunk_prob=0.25, silence_unit_prob=1.0), TB)
    batch = sampler.draw(2000, torch.Generator().manual_seed(0))
    first = batch.chunk_index == 0
    assert 0.21 < float(first.float().mean()) < 0.29
    assert torch.equal(batch.cond.has_sink, ~first) and torch.equal(batch.cond.has_motion, ~first)
    assert bool((batch.chunk_index < latents.num_frames[batch.sample_index] // Fc).all())  # never a partial chunk
    frames = (latents.frame_offset[batch.sample_index] + batch.chunk_index * Fc)[:, None] + torch.arange(Fc)
    silent = latents.rms[frames] < sampler.config.silence_rms
    # silent frames all become the silence unit; the others keep their unit (a pause already is silence)
    assert silent.any() and bool((batch.cond.units[silent] == silence).all())
    assert torch.equal(batch.cond.units[~silent], latents.units[frames][~silent])
    assert torch.equal(sampler.gather(batch.sample_index, batch.chunk_index).cond.units, latents.units[frames])


def test_motion_noise_perturbs_only_the_training_draws_motion(latents: LatentCache, codecs: Codecs) -> None:
    silence = dit_config(codecs).silence_unit
    clean = ChunkSampler(latents, silence, ChunkSamplingConfig(first_chunk_prob=0.25), TB)
    noisy = ChunkSampler(latents, silence, ChunkSamplingConfig(first_chunk_prob=0.25, motion_noise=0.5), TB)
    batch = noisy.draw(400, torch.Generator().manual_seed(0))
    truth = clean.gather(batch.sample_index, batch.chunk_index)  # no generator: evaluation, clean context
    later = batch.cond.has_motion
    assert later.any() and (~later).any()
    for key in ("motion_video", "motion_audio"):
        got, want = getattr(batch.cond, key), getattr(truth.cond, key)
        assert torch.equal(got[~later], torch.zeros_like(got[~later]))  # chunk 0 still has no motion
        err = (got - want)[later].flatten(1).std(dim=1)  # per row: its drawn level, uniform in [0, 0.5]
        assert 0.2 < float(err.mean()) < 0.3 and float(err.max()) < 0.55 and float(err.min()) < 0.05
    # the rest of the conditions and the targets are the clean ones
    assert torch.equal(batch.video, truth.video) and torch.equal(batch.cond.sink_video, truth.cond.sink_video)
    assert torch.equal(noisy.gather(batch.sample_index, batch.chunk_index).cond.motion_video, truth.cond.motion_video)
    with pytest.raises(ValueError, match="motion_noise"):
        ChunkSamplingConfig(motion_noise=-0.1)


# ---- objective ------------------------------------------------------------------------------------

class OracleDiT(nn.Module):
    """Knows the clean latents: its velocity (x_t - x0) / t is exactly noise - x0."""

    def __init__(self, video: Tensor, audio: Tensor, null_unit: int = 0) -> None:
        super().__init__()
        self.video, self.audio, self.null_unit = video, audio, null_unit

    def forward(self, video_noisy: Tensor, audio_noisy: Tensor, t: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        video_t, audio_t = t.view(-1, 1, 1, 1, 1), t.view(-1, 1, 1)
        return (video_noisy - self.video) / video_t, (audio_noisy - self.audio) / audio_t


def test_loss_is_zero_at_the_sampler_convention(latents: LatentCache, codecs: Codecs) -> None:
    batch = ChunkSampler(latents, dit_config(codecs).silence_unit).draw(4, torch.Generator().manual_seed(1))
    config = FlowMatchingConfig()
    noise = draw_noise(config, batch.video.shape, batch.audio.shape, torch.Generator().manual_seed(2))
    noise.t = noise.t.clamp(min=0.05)  # the oracle divides by t
    oracle = OracleDiT(batch.video, batch.audio)
    loss, metrics = flow_matching_loss(oracle, batch.video, batch.audio, batch.cond, noise, config)
    assert float(loss) < 1e-8 and metrics["loss_video"] < 1e-8 and metrics["loss_audio"] < 1e-8
    assert torch.equal(interpolate(batch.video, noise.video, torch.ones(4)), noise.video)
    assert torch.equal(interpolate(batch.video, noise.video, torch.zeros(4)), batch.video)
    # The same oracle, integrated by the inference sampler, lands on the clean latents: one convention.
    video, audio = FlowMatchingSampler(steps=4).sample(oracle, batch.cond, noise.video, noise.audio)
    torch.testing.assert_close(video, batch.video, atol=1e-4, rtol=0)
    torch.testing.assert_close(audio, batch.audio, atol=1e-4, rtol=0)
    # A model off by a constant pays exactly its squared offset, weighted per modality.
    shifted = FlowMatchingConfig(video_weight=2.0, audio_weight=0.5)
    off = OracleDiT(batch.video - 0.1, batch.audio + 0.2)
    loss, metrics = flow_matching_loss(off, batch.video, batch.audio, batch.cond, noise, shifted)
    expected_video = float(((0.1 / noise.t) ** 2).mean())
    assert metrics["loss_video"] == pytest.approx(expected_video, rel=1e-4)
    assert float(loss) == pytest.approx(2.0 * metrics["loss_video"] + 0.5 * metrics["loss_audio"], rel=1e-5)
    assert torch.allclose(velocity_target(batch.video, noise.video), noise.video - batch.video)


def test_with_a_prior_the_audio_target_is_the_residual(latents: LatentCache, codecs: Codecs) -> None:
    batch = ChunkSampler(latents, dit_config(codecs).silence_unit).draw(4, torch.Generator().manual_seed(1))
    config = FlowMatchingConfig()
    noise = draw_noise(config, batch.video.shape, batch.audio.shape, torch.Generator().manual_seed(2))
    noise.t = noise.t.clamp(min=0.05)
    prior = torch.randn(batch.audio.shape, generator=torch.Generator().manual_seed(3))
    seen = {}

    class ResidualOracle(OracleDiT):
        def forward(self, video_noisy, audio_noisy, t, **cond):
            seen.update(cond)
            return super().forward(video_noisy, audio_noisy, t)

    loss, _ = flow_matching_loss(ResidualOracle(batch.video, batch.audio - prior), batch.video, batch.audio,
                                 batch.cond, noise, config, prior)
    assert float(loss) < 1e-8 and torch.equal(seen["audio_prior"], prior)
    # the same oracle without the prior is off by exactly the prior in x0
    loss, metrics = flow_matching_loss(ResidualOracle(batch.video, batch.audio - prior), batch.video, batch.audio,
                                       batch.cond, noise, config)
    assert metrics["loss_audio"] > 0.1
    # a video prior: the video target is the residual over it, as the audio one
    video_prior = torch.randn(batch.video.shape, generator=torch.Generator().manual_seed(4))
    loss, metrics = flow_matching_loss(ResidualOracle(batch.video - video_prior, batch.audio - prior), batch.video,
                                       batch.audio, batch.cond, noise, config, prior, video_prior)
    assert float(loss) < 1e-8 and torch.equal(seen["video_prior"], video_prior)
    loss, metrics = flow_matching_loss(ResidualOracle(batch.video - video_prior, batch.audio - prior), batch.video,
                                       batch.audio, batch.cond, noise, config, prior)
    assert metrics["loss_video"] > 0.1 and metrics["loss_audio"] < 1e-8


def test_mouth_weight_shifts_the_video_term_onto_the_mouth_box(latents: LatentCache, codecs: Codecs) -> None:
    batch = ChunkSampler(latents, dit_config(codecs).silence_unit).draw(4, torch.Generator().manual_seed(1))
    plain = FlowMatchingConfig()
    noise = draw_noise(plain, batch.video.shape, batch.audio.shape, torch.Generator().manual_seed(2))
    noise.t = noise.t.clamp(min=0.05)
    h, w = batch.video.shape[-2:]
    mask = mouth_mask(plain.mouth_box, h, w)
    # An oracle wrong only inside the mouth box: its error is the box's share of the frame, or more.
    off = torch.where(mask, 0.1, 0.0)
    model = OracleDiT(batch.video - off, batch.audio)
    err = ((off / noise.t.view(-1, 1, 1, 1, 1)) ** 2).expand_as(batch.video)
    _, base = flow_matching_loss(model, batch.video, batch.audio, batch.cond, noise, plain)
    _, heavy = flow_matching_loss(model, batch.video, batch.audio, batch.cond, noise,
                                  FlowMatchingConfig(mouth_weight=6.0))
    share = float(mask.float().mean())
    assert base["loss_video"] == pytest.approx(float(err.mean()), rel=1e-4)
    assert heavy["loss_video"] == pytest.approx(float(err.mean()) * 6 / (1 + 5 * share), rel=1e-4)
    assert heavy["loss_mouth"] == pytest.approx(base["loss_mouth"]) == pytest.approx(float(err[..., mask].mean()),
                                                                                      rel=1e-4)
    # Wrong only outside the box: the weighting discounts it, and the mouth term sees nothing.
    model = OracleDiT(batch.video - (0.1 - off), batch.audio)
    _, base = flow_matching_loss(model, batch.video, batch.audio, batch.cond, noise, plain)
    _, heavy = flow_matching_loss(model, batch.video, batch.audio, batch.cond, noise,
                                  FlowMatchingConfig(mouth_weight=6.0))
    assert heavy["loss_video"] < base["loss_video"] and heavy["loss_mouth"] < 1e-10
    with pytest.raises(ValueError, match="mouth_box"):
        FlowMatchingConfig(mouth_box=(0.9, 0.2, 0.3, 0.5))
    with pytest.raises(ValueError, match="mouth_weight"):
        FlowMatchingConfig(mouth_weight=0.0)


def test_the_mouth_box_holds_where_talking_frames_change(corpus: Path) -> None:
    """The default box is the corpus's: per pixel, frames change several times more inside it than
    in the rest of the lower face (below the eyes), for every sample."""
    for sample in ShardDataset(corpus, "train"):
        frames = sample.frames.astype(np.float32).mean(-1)
        H, W = frames.shape[1:]
        change = np.abs(np.diff(frames, axis=0)).mean(0)  # [H, W]
        inside = mouth_mask(FlowMatchingConfig().mouth_box, H, W).numpy()  # the same box at pixel resolution
        lower = np.zeros((H, W), dtype=bool)
        lower[H // 2 - 4:] = True
        ratio = change[inside].mean() / change[lower & ~inside].mean()
        assert ratio > 4, (sample.sample_id, ratio)


def test_logit_normal_t_stays_inside_the_unit_interval() -> None:
    config = FlowMatchingConfig(t_sampling="logit_normal")
    draw = draw_noise(config, (4096, 1, 1, 1, 1), (4096, 1, 1), torch.Generator().manual_seed(0))
    assert 0 < float(draw.t.min()) and float(draw.t.max()) < 1 and abs(float(draw.t.median()) - 0.5) < 0.05
    with pytest.raises(ValueError, match="t_sampling"):
        FlowMatchingConfig(t_sampling="cosine")


def test_overfitting_two_chunks_lowers_the_loss(latents: LatentCache, codecs: Codecs) -> None:
    torch.manual_seed(0)
    model = JointAudioVideoDiT(dit_config(codecs, width=32, depth=1, num_heads=2, cond_dropout=0.0)).train()
    sampler = ChunkSampler(latents, model.config.silence_unit)
    batch = sampler.gather(torch.tensor([1, 3]), torch.tensor([0, 2]))
    config = FlowMatchingConfig()
    noise = draw_noise(config, batch.video.shape, batch.audio.shape, torch.Generator().manual_seed(0))
    noise = NoiseDraw(torch.tensor([0.3, 0.7]), noise.video, noise.audio)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, _ = flow_matching_loss(model, batch.video, batch.audio, batch.cond, noise, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


# ---- the distributed trainer ----------------------------------------------------------------------

def test_torchrun_two_ranks_train_export_and_resume(corpus: Path, cache: Path, tmp_path: Path, torchrun) -> None:
    out = tmp_path / "run"
    base = [f"data.corpus={corpus}", f"data.cache={cache}", f"run.out={out}",
            "model.width=64", "model.depth=1", "model.num_heads=2",
            "run.batch_size=2", "run.log_every=1", "run.checkpoint_every=100", "run.warmup_steps=2",
            "prior.steps=3", "prior.batch_size=4",  # the config's audio prior, fitted first,
            f"prior.extra_corpora={corpus}",  # its speech from a corpus's audio alone (here the same clips)
            "model.video_prior_layers=1", "model.video_prior_width=16",  # and a video prior, fitted too
            "video_prior.steps=3", "video_prior.batch_size=4"]

    def run(steps: int) -> str:
        return torchrun("training.trainers.dit", ROOT / "training" / "configs" / "dit_tiny.toml",
                        [*base, f"run.steps={steps}"], timeout=240)

    log = run(3)
    assert "dit prior: step 3/3" in log and "prior cache" in log and "dit video prior: step 3/3" in log
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["step"] == 3 and len(ranks["digests"]) == 2 and len(set(ranks["digests"])) == 1
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    assert (out / "checkpoints" / "step-0000003" / "state.pt").exists()
    first_export = (out / "export" / "dit" / "model.safetensors").read_bytes()

    log = run(5)
    assert "resumed from" in log and "at step 3" in log and "prior:" not in log  # both fitted once
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["step"] == 5 and len(set(ranks["digests"])) == 1
    history = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history == [1, 2, 3, 4, 5]  # steps 1-3 were not redone
    assert (out / "export" / "dit" / "model.safetensors").read_bytes() != first_export

    renderer = load_renderer(out / "export")
    assert renderer.trained and (renderer.dit.config.width, renderer.dit.config.depth) == (64, 1)
    assert int(renderer.dit.prior.fitted_steps) == 3  # the EMA export holds the fitted priors
    assert int(renderer.dit.video_prior.fitted_steps) == 3
    assert renderer.dit.video_prior.out.weight.abs().sum() > 0  # fitted: no longer the zero init
    assert json.loads((out / "export" / "bundle.json").read_text())["training"]["dit"]["steps"] == 5


def test_eval_reports_chunk_and_rollout_metrics(corpus: Path, cache: Path, codecs: Codecs, tmp_path: Path) -> None:
    from streamchar.models.io import save_module
    from training.trainers.dit import evaluate

    torch.manual_seed(0)
    save_module(JointAudioVideoDiT(dit_config(codecs, width=32, depth=1, num_heads=2)),
                dit_config(codecs, width=32, depth=1, num_heads=2), tmp_path / "ckpt" / "dit")
    report = evaluate(tmp_path / "ckpt", corpus, cache, "test", chunks=4, steps=(2,), guidance=(1.0, 2.0),
                      rollouts=1, out=tmp_path / "eval")
    assert [(r["steps"], r["guidance"]) for r in report["settings"]] == [(2, 1.0), (2, 2.0)]
    for row in report["settings"] + report["rollouts"]:
        assert all(np.isfinite(row[k]) for k in ("video_mse", "audio_mse", "psnr", "mouth_l1", "energy_corr"))
    assert report["codec_psnr"] > 25  # the codec's own round trip on these frames
    assert Path(report["rollouts"][0]["mp4"]).stat().st_size > 1000
    # the recognizer heard the rolled-out audio: an untrained DiT's is far from the transcript, the truth's is not
    assert report["rollout_per"] > 0.5 and report["rollout_per_ground_truth"] < report["rollout_per"]
    # and the sync judge saw it: the truth's mouth and voice agree, an untrained DiT's do not
    assert report["rollout_lse_c_ground_truth"] > report["rollout_lse_c"] + 0.1
    assert (tmp_path / "eval" / "report.json").exists()


def test_warm_start_from_an_export_fills_the_dit_and_its_ema(tmp_path: Path) -> None:
    """Training a shipped DiT further: the export holds the bare model, the trainer an EMADiT around it."""
    from streamchar.models.io import save_module
    from training.trainers.dit import EMADiT
    from training.trainers.runtime import warm_start

    config = dataclasses.replace(PRESETS["tiny"], num_units=5)
    torch.manual_seed(1)
    source = JointAudioVideoDiT(config)
    save_module(source, config, tmp_path / "dit")
    torch.manual_seed(2)
    target = EMADiT(JointAudioVideoDiT(config), decay=0.99)
    report = warm_start(target, tmp_path / "dit")
    assert report["fresh"] == ["ema_updates"] and len(report["copied"]) == 2 * len(source.state_dict())
    for name, weight in source.state_dict().items():
        assert torch.equal(target.dit.state_dict()[name], weight) and torch.equal(target.ema.state_dict()[name], weight)


def test_the_prior_only_ablation_speaks_exactly_the_prior_mean() -> None:
    from training.trainers.dit import PriorOnly

    config = dataclasses.replace(PRESETS["tiny"], num_units=5, width=32, depth=1, num_heads=2, prior_layers=1)
    torch.manual_seed(0)
    dit = JointAudioVideoDiT(config).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.1)
    g = torch.Generator().manual_seed(1)
    Fc, m, Ca, C, h = config.frames_per_chunk, config.mel_per_frame, config.audio_channels, config.video_channels, config.video_latent_size
    cond = {"units": torch.randint(0, 5, (2, Fc), generator=g), "ref_video": torch.randn(2, C, h, h, generator=g),
            "sink_video": torch.zeros(2, Fc, C, h, h), "sink_audio": torch.zeros(2, Fc * m, Ca),
            "motion_video": torch.zeros(2, 2, C, h, h), "motion_audio": torch.zeros(2, 2 * m, Ca),
            "has_sink": torch.zeros(2, dtype=torch.bool), "has_motion": torch.zeros(2, dtype=torch.bool)}
    noise = torch.randn(2, Fc, C, h, h, generator=g), torch.randn(2, Fc * m, Ca, generator=g)
    video, audio = FlowMatchingSampler(4, guidance=3.0).sample(PriorOnly(dit), cond, *noise)
    with torch.no_grad():
        torch.testing.assert_close(audio, dit.prior_mean(cond["units"]), atol=1e-5, rtol=1e-5)
    full_video, full_audio = FlowMatchingSampler(4, guidance=3.0).sample(dit, cond, *noise)
    assert not torch.allclose(full_audio, audio)  # the DiT's own residual is not zero
    assert video.shape == full_video.shape
    with pytest.raises(ValueError, match="prior"):
        PriorOnly(JointAudioVideoDiT(dataclasses.replace(config, prior_layers=0)))
    with pytest.raises(ValueError, match="video prior"):
        PriorOnly(dit, audio=False, video=True)


def test_the_video_prior_only_ablation_shows_exactly_the_video_prior_mean() -> None:
    from training.trainers.dit import PriorOnly

    config = dataclasses.replace(PRESETS["tiny"], num_units=5, width=32, depth=1, num_heads=2, prior_layers=1,
                                 video_prior_layers=1, video_prior_width=16)
    torch.manual_seed(0)
    dit = JointAudioVideoDiT(config).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.1)
    g = torch.Generator().manual_seed(1)
    Fc, m, Ca, C, h = config.frames_per_chunk, config.mel_per_frame, config.audio_channels, config.video_channels, config.video_latent_size
    cond = {"units": torch.randint(0, 5, (2, Fc), generator=g), "ref_video": torch.randn(2, C, h, h, generator=g),
            "sink_video": torch.zeros(2, Fc, C, h, h), "sink_audio": torch.zeros(2, Fc * m, Ca),
            "motion_video": torch.randn(2, 2, C, h, h, generator=g), "motion_audio": torch.zeros(2, 2 * m, Ca),
            "has_sink": torch.zeros(2, dtype=torch.bool), "has_motion": torch.tensor([True, False])}
    noise = torch.randn(2, Fc, C, h, h, generator=g), torch.randn(2, Fc * m, Ca, generator=g)
    video, audio = FlowMatchingSampler(4, guidance=3.0).sample(PriorOnly(dit, audio=False, video=True), cond, *noise)
    with torch.no_grad():
        mean = dit.video_prior_mean(cond["units"], None, None, cond["ref_video"], cond["motion_video"], cond["has_motion"])
    torch.testing.assert_close(video, mean, atol=1e-5, rtol=1e-5)
    full_video, full_audio = FlowMatchingSampler(4, guidance=3.0).sample(dit, cond, *noise)
    assert not torch.allclose(full_video, video)  # the DiT's own video residual is not zero
    assert audio.shape == full_audio.shape  # the DiT's in both (not equal: it is denoised with the video)



def test_speech_latents_are_the_dit_caches_audio_and_units_and_draw_like_chunks(corpus: Path, latents: LatentCache,
                                                                                codecs: Codecs, tmp_path: Path) -> None:
    """The prior's speech-only data, encoded from the clips' audio alone, matches the DiT cache of the same clips."""
    from training.pipelines.dit_data import speech_latents

    speech = speech_latents(corpus, tmp_path, codecs)
    assert torch.equal(speech.num_frames, latents.num_frames) and torch.equal(speech.units, latents.units)
    torch.testing.assert_close(speech.audio.float(), latents.audio.float(), atol=2e-3, rtol=0)
    again = speech_latents(corpus, tmp_path, codecs)  # from the file now
    assert torch.equal(again.units, speech.units) and len(list((tmp_path / "prior").glob("*.pt"))) == 1
    silence = codecs.units.config.num_units
    units, previous, has_previous, ahead, has_next, audio = speech.draw(
        32, torch.Generator().manual_seed(0), silence, ChunkSamplingConfig(silence_unit_prob=0.0, lookahead_dropout=0.5))
    assert units.shape == previous.shape == ahead.shape == (32, Fc)
    assert audio.shape == (32, Fc * m, codecs.audio.latent_channels)
    assert has_next.any() and (~has_next).any()  # half the rows hide their next units
    assert has_previous.any() and (~has_previous).any() and previous[~has_previous].abs().max() == 0
    for row in range(32):  # every drawn chunk is a whole chunk of some clip, its previous one before it
        hits = [(s, k) for s in range(len(latents)) for k in range(int(latents.num_frames[s]) // Fc)
                if torch.equal(latents.units[int(latents.frame_offset[s]) + k * Fc:][:Fc], units[row])
                and torch.equal(latents.audio[int(latents.frame_offset[s]) + k * Fc:][:Fc].flatten(0, 1).float(), audio[row])]
        assert hits and any((k > 0) == bool(has_previous[row]) for _, k in hits)
        # ... and its next units the clip's next frames', silence past the clip's end
        assert any(torch.equal(torch.cat([latents.units[int(latents.frame_offset[s]) + (k + 1) * Fc:]
                                          [:max(0, int(latents.num_frames[s]) - (k + 1) * Fc)][:Fc],
                                          torch.full((Fc,), silence)])[:Fc], ahead[row]) for s, k in hits)


def test_a_prior_fits_learning_rate_warms_up_then_decays_to_its_floor() -> None:
    from training.trainers.dit import PriorFitConfig

    config = PriorFitConfig(steps=1000, lr=1e-3, warmup_steps=100, min_lr_ratio=0.05)
    assert config.lr_at(1) == pytest.approx(1e-5) and config.lr_at(100) == pytest.approx(1e-3)
    lrs = [config.lr_at(step) for step in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(5e-5)
    assert {PriorFitConfig(steps=10).lr_at(s) for s in range(1, 11)} == {2e-3}  # the default: constant
    with pytest.raises(ValueError, match="min_lr_ratio"):
        PriorFitConfig(min_lr_ratio=0.0)
