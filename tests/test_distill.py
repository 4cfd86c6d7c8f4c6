"""Distillation: the DMD objective in the sampler's convention (backward simulation reproduces the few-step
sampler; the generator gradient points from the critic's estimate to the teacher's), and the distillation
trainer under torchrun (two gloo ranks: identical weights, resume, an export the renderer loads)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from streamchar.models.bundle import load_renderer
from streamchar.models.io import save_module
from streamchar.models.joint_dit import PRESETS, JointAudioVideoDiT
from streamchar.models.sampler import FlowMatchingSampler
from streamchar.timebase import TimeBase
from training.objectives.dmd import (
    DMDConfig,
    StudentDraw,
    backward_simulation,
    clean_estimate,
    dmd_generator_loss,
    draw_student_steps,
    grid,
)
from training.pipelines.dit_data import ChunkSampler, LatentCache, load_codecs

ROOT = Path(__file__).resolve().parent.parent
TB = TimeBase()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def num_units() -> int:
    return load_codecs().units.config.num_units


def small_dit(num_units: int, seed: int = 0) -> JointAudioVideoDiT:
    torch.manual_seed(seed)
    config = dataclasses.replace(PRESETS["tiny"], num_units=num_units, width=64, depth=1, num_heads=2)
    dit = JointAudioVideoDiT(config).eval()
    with torch.no_grad():  # the output layers start at zero (adaLN-zero): perturb all, so it is not constant
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return dit


def test_the_sampling_grid_is_the_samplers() -> None:
    for steps in (1, 2, 4, 32):
        assert grid(steps) == FlowMatchingSampler(steps).timesteps().tolist()


def test_draws_cover_every_step_of_every_grid() -> None:
    draw = draw_student_steps(DMDConfig(student_steps=(4, 2, 1)), 4000, torch.Generator().manual_seed(0))
    pairs = set(zip(draw.steps.tolist(), draw.index.tolist()))
    assert pairs == {(4, 0), (4, 1), (4, 2), (4, 3), (2, 0), (2, 1), (1, 0)}
    assert torch.equal(draw.t, 1.0 - draw.index.double() / draw.steps.double())


def test_backward_simulation_then_a_clean_estimate_is_the_few_step_sampler(dit_cache: Path, num_units: int) -> None:
    """Trained at step i of the S-step grid, the student sees exactly what the renderer's S-step sampler
    feeds it there; its clean estimate at the last step is the sampler's output."""
    dit = small_dit(num_units)
    latents = LatentCache.load(dit_cache, "train")
    g = torch.Generator().manual_seed(3)
    batch = ChunkSampler(latents, dit.config.silence_unit).draw(4, g)  # first and later chunks
    cond = {f.name: getattr(batch.cond, f.name) for f in dataclasses.fields(batch.cond)}
    video_noise, audio_noise = torch.randn(batch.video.shape, generator=g), torch.randn(batch.audio.shape, generator=g)
    steps, index = torch.tensor([4, 2, 1, 4]), torch.tensor([3, 1, 0, 0])
    video_in, audio_in = backward_simulation(dit, cond, video_noise, audio_noise, StudentDraw(steps, index))
    t = StudentDraw(steps, index).t.float()
    with torch.no_grad():
        v, a = dit(video_noisy=video_in, audio_noisy=audio_in, t=t, **cond)
    video0, audio0 = clean_estimate(video_in, v, t), clean_estimate(audio_in, a, t)
    for row, n in ((0, 4), (1, 2), (2, 1)):  # at each grid's last step: the whole sampler
        part = {k: x[row:row + 1] for k, x in cond.items()}
        video, audio = FlowMatchingSampler(n).sample(dit, part, video_noise[row:row + 1], audio_noise[row:row + 1])
        torch.testing.assert_close(video0[row:row + 1], video, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(audio0[row:row + 1], audio, atol=1e-5, rtol=1e-5)
    assert torch.equal(video_in[3], video_noise[3]) and torch.equal(audio_in[3], audio_noise[3])  # step 0: noise


class CleanEstimator(nn.Module):
    """A velocity field whose clean estimate x_t - t v is a fixed chunk (or, with `track`, a live one)."""

    null_unit = 0

    def __init__(self, video: Tensor, audio: Tensor) -> None:
        super().__init__()
        self.video, self.audio = video, audio

    def forward(self, video_noisy: Tensor, audio_noisy: Tensor, t: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        tv, ta = t.view(-1, 1, 1, 1, 1), t.view(-1, 1, 1)
        return (video_noisy - self.video.detach()) / tv, (audio_noisy - self.audio.detach()) / ta


def test_the_generator_gradient_points_from_the_critic_to_the_teacher() -> None:
    g = torch.Generator().manual_seed(0)
    shape_v, shape_a = (2, 8, 4, 4, 4), (2, 32, 8)
    teacher_v, teacher_a = torch.randn(shape_v, generator=g), torch.randn(shape_a, generator=g)
    video0 = torch.randn(shape_v, generator=g).requires_grad_(True)
    audio0 = torch.randn(shape_a, generator=g).requires_grad_(True)
    teacher = CleanEstimator(teacher_v, teacher_a)
    critic = CleanEstimator(video0, audio0)  # a perfect critic: its estimate is the student's own chunk
    config = DMDConfig(guidance=1.0, audio_weight=2.0)
    units = torch.zeros(2, 8, dtype=torch.long)
    t = torch.tensor([0.3, 0.8])
    loss, metrics = dmd_generator_loss(video0, audio0, {"units": units}, teacher, critic, config, t,
                                       torch.randn(shape_v, generator=g), torch.randn(shape_a, generator=g))
    loss.backward()
    # d loss / d x0 = weight * (x0_fake - x0_real) / mean|x0 - x0_real| / numel, per row
    gap_v = (video0 - teacher_v).abs().mean(dim=(1, 2, 3, 4), keepdim=True).detach()
    gap_a = (audio0 - teacher_a).abs().mean(dim=(1, 2), keepdim=True).detach()
    torch.testing.assert_close(video0.grad, (video0 - teacher_v).detach() / gap_v / video0.numel())
    torch.testing.assert_close(audio0.grad, 2.0 * (audio0 - teacher_a).detach() / gap_a / audio0.numel())
    assert metrics["teacher_gap_video"] == pytest.approx(float(gap_v.mean()), rel=1e-5)

    # Following it, the student's chunks approach the teacher's.
    video0.grad = audio0.grad = None
    optimizer = torch.optim.SGD([video0, audio0], lr=float(video0.numel()) * 0.05)
    distances = []
    for _ in range(20):
        loss, _ = dmd_generator_loss(video0, audio0, {"units": units}, teacher, critic, config, t,
                                     torch.randn(shape_v, generator=g), torch.randn(shape_a, generator=g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        distances.append(float((video0 - teacher_v).detach().abs().mean()))
    assert distances[-1] < 0.5 * distances[0] and all(b < a for a, b in zip(distances, distances[1:]))


def test_a_real_critic_fits_the_students_chunks_and_the_teacher_stays_frozen(dit_cache: Path, num_units: int) -> None:
    """One in-process step of the distillation modules: the student and critic move, the teacher does not
    (and stays in eval mode, so its CFG dropout never corrupts the real score)."""
    from training.trainers.distill import DistillModules, DistillTrainConfig, draw_batch

    teacher = small_dit(num_units)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    config = DistillTrainConfig()
    modules = DistillModules(teacher, config, ema_decay=0.9).train()
    assert not modules.teacher.training and modules.student.dit.config.cond_dropout == 0.0
    latents = LatentCache.load(dit_cache, "train")
    g = torch.Generator().manual_seed(0)
    batch = draw_batch(ChunkSampler(latents, teacher.config.silence_unit).draw(3, g), config, g)
    params = [p for p in modules.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loss, metrics = modules(batch)
    loss.backward()
    assert all(p.grad is None for p in modules.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in modules.student.dit.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in modules.critic.parameters())
    optimizer.step()
    for k, v in modules.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert {"dmd_video", "dmd_audio", "teacher_gap_video", "critic_loss_video", "loss_critic"} <= set(metrics)


def test_torchrun_two_ranks_distil_resume_and_export(dit_corpus: Path, dit_cache: Path, num_units: int,
                                                     tmp_path: Path, torchrun) -> None:
    teacher = small_dit(num_units, seed=5)
    save_module(teacher, teacher.config, tmp_path / "teacher")
    out = tmp_path / "run"
    config = ROOT / "training" / "configs" / "distill_tiny.toml"
    base = [f"teacher={tmp_path / 'teacher'}", f"data.corpus={dit_corpus}", f"data.cache={dit_cache}",
            f"run.out={out}", "run.batch_size=2", "run.log_every=1", "run.checkpoint_every=100", "run.warmup_steps=1"]

    def run(steps: int) -> str:
        return torchrun("training.trainers.distill", config, [*base, f"run.steps={steps}"])

    run(2)
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["step"] == 2 and len(ranks["digests"]) == 2 and len(set(ranks["digests"])) == 1
    log = run(3)
    assert "resumed from" in log and "at step 2" in log
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["step"] == 3 and len(set(ranks["digests"])) == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all("grad_norm_student" in r and "grad_norm_critic" in r for r in rows)

    renderer = load_renderer(out / "export")
    assert renderer.trained and renderer.dit.config.cond_dropout == 0.0 and renderer.dit.config.width == 64
    record = json.loads((out / "export" / "bundle.json").read_text())["training"]["dit"]
    assert record["stage"] == "distill-1" and record["steps"] == 3
    student = renderer.dit.state_dict()
    assert any(not torch.equal(student[k], v) for k, v in teacher.state_dict().items())  # it was trained

    # Stage 2 from stage 1's last checkpoint: rollouts of 2-3 chunks, the clips' own units.
    stage2 = tmp_path / "stage2"
    log = torchrun("training.trainers.distill", config,
                   [*base, "stage=2", f"run.out={stage2}", "run.steps=2",
                    f"run.init_from={out / 'checkpoints' / 'step-0000003'}", "rollout.units=corpus",
                    "rollout.min_chunks=2", "rollout.max_chunks=3", "rollout.ramp_steps=1"])
    assert "warm start from" in log
    ranks = json.loads((stage2 / "ranks.json").read_text())
    assert ranks["step"] == 2 and len(set(ranks["digests"])) == 1
    rows = [json.loads(line) for line in (stage2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["rollout_chunks"] for r in rows] == [2, 3]  # the curriculum
    record = json.loads((stage2 / "export" / "bundle.json").read_text())["training"]["dit"]
    assert record["stage"] == "distill-2" and record["sampler"]["steps"] == [4]
    assert load_renderer(stage2 / "export").trained


def test_a_rollout_renders_each_chunk_from_its_own_previous_chunks(dit_cache: Path, num_units: int) -> None:
    """Stage 2's rollout is the renderer's loop: chunk k's motion frames are the end of the student's own
    chunk k-1 (as its S-step sampler renders it), its sink is the student's chunk 0, and the student is
    trained at the input the sampler had at the drawn step."""
    from training.pipelines.rollouts import RolloutSource
    from training.trainers.distill import DistillModules, DistillTrainConfig, draw_rollout

    teacher = small_dit(num_units)
    config = DistillTrainConfig(stage=2)
    modules = DistillModules(teacher, config, ema_decay=0.9).eval()
    latents = LatentCache.load(dit_cache, "train")
    source = RolloutSource(latents, "corpus")
    F, Fm = TB.frames_per_chunk, TB.motion_frames
    draw = draw_rollout(source, 2, 3, teacher.config, config, torch.Generator().manual_seed(1))
    first = int(latents.frame_offset[int(draw.batch.sample_index[0])])
    assert torch.equal(draw.batch.units[0].flatten(), latents.units[first:first + 3 * F])  # by time, from chunk 0
    cond, video_in, audio_in = modules.roll_out(draw)
    B, L = 2, 3
    rows = {f.name: getattr(cond, f.name).view(B, L, *getattr(cond, f.name).shape[1:])
            for f in dataclasses.fields(cond)}
    sampler = FlowMatchingSampler(config.rollout.sampler_steps)
    student = modules.student.dit
    outputs = []
    for k in range(L):
        part = {name: value[:, k] for name, value in rows.items()}
        outputs.append(sampler.sample(student, part, draw.video_noise[:, k], draw.audio_noise[:, k]))
        assert bool(part["has_motion"].all()) == (k > 0) and bool(part["has_sink"].all()) == (k > 0)
        if k:
            torch.testing.assert_close(part["motion_video"], outputs[k - 1][0][:, -Fm:], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(part["motion_audio"], outputs[k - 1][1][:, -Fm * TB.mel_per_frame:],
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(part["sink_video"], outputs[0][0], atol=1e-5, rtol=1e-5)
        trained_at = backward_simulation(student, part, draw.video_noise[:, k], draw.audio_noise[:, k],
                                         StudentDraw(torch.full((B,), sampler.steps), draw.index[:, k]))
        torch.testing.assert_close(video_in.view(B, L, *video_in.shape[1:])[:, k], trained_at[0], atol=1e-5, rtol=1e-5)
    assert len(set(draw.index.flatten().tolist())) > 1


def test_orchestrator_units_are_decoded_once_and_cached(dit_corpus: Path, tmp_path: Path) -> None:
    from training.pipelines.rollouts import orchestrator_units

    units = orchestrator_units(dit_corpus, "test", tmp_path, sample_ids=None, progress=False)
    assert len(units) == 2
    silence = load_codecs().units.config.num_units
    for u in units.values():
        assert len(u) % TB.frames_per_chunk == 0 and int(u.min()) >= 0 and int(u.max()) <= silence
        assert bool((u != silence).any())  # it speaks
    path = tmp_path / "orchestrator" / "test.safetensors"
    before = path.stat().st_mtime_ns
    again = orchestrator_units(dit_corpus, "test", tmp_path, progress=False)
    assert path.stat().st_mtime_ns == before and all(torch.equal(again[k], v) for k, v in units.items())


def test_a_teacher_with_an_audio_prior_is_refused_clearly(tmp_path: Path) -> None:
    from training.trainers.distill import load_teacher

    config = dataclasses.replace(PRESETS["tiny"], num_units=5, prior_layers=1)
    save_module(JointAudioVideoDiT(config), config, tmp_path / "dit")
    with pytest.raises(ValueError, match="audio prior"):
        load_teacher(str(tmp_path / "dit"))
