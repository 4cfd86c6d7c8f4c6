"""Flow-matching sampler: exactness on a known velocity field, forward counting, CFG batching."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from streamchar.models.joint_dit import JointAudioVideoDiT, JointDiTConfig
from streamchar.models.sampler import FlowMatchingSampler

NULL = 99


class StraightFlow(nn.Module):
    """Velocity of x_t = (1 - t) x0 + t noise towards a fixed x0: (x_t - x0) / t = noise - x0."""

    null_unit = NULL

    def __init__(self, video_x0: torch.Tensor, audio_x0: torch.Tensor, unit_bias: float = 0.0) -> None:
        super().__init__()
        self.video_x0, self.audio_x0 = video_x0, audio_x0
        self.unit_bias = unit_bias  # adds a unit-dependent term so guidance is observable
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward(self, video_noisy, audio_noisy, t, units, **context):
        self.calls.append(dict(video_noisy=video_noisy, t=t, units=units, **context))
        assert t.shape == (video_noisy.shape[0],) and units.shape[0] == video_noisy.shape[0]
        copies = video_noisy.shape[0] // self.video_x0.shape[0]  # 2 when guided
        video_x0, audio_x0 = torch.cat([self.video_x0] * copies), torch.cat([self.audio_x0] * copies)
        bias = self.unit_bias * (units != NULL).float().mean(dim=1)  # [B]
        video = (video_noisy - video_x0) / t.view(-1, 1, 1, 1, 1) + bias.view(-1, 1, 1, 1, 1)
        audio = (audio_noisy - audio_x0) / t.view(-1, 1, 1)
        return video, audio


def shapes(batch: int = 2):
    return (batch, 8, 4, 2, 2), (batch, 32, 6)


def condition(batch: int = 2) -> dict[str, torch.Tensor]:
    return {"units": torch.arange(8).repeat(batch, 1), "ref_video": torch.randn(batch, 4, 2, 2)}


@pytest.mark.parametrize("steps, shift", [(1, 1.0), (4, 1.0), (4, 3.0)])
def test_recovers_x0_of_a_straight_flow(steps: int, shift: float) -> None:
    video_shape, audio_shape = shapes()
    x0_video, x0_audio = torch.randn(video_shape), torch.randn(audio_shape)
    model = StraightFlow(x0_video, x0_audio)
    video, audio = FlowMatchingSampler(steps, shift=shift).sample(
        model, condition(), torch.randn(video_shape), torch.randn(audio_shape)
    )
    torch.testing.assert_close(video, x0_video, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(audio, x0_audio, rtol=1e-5, atol=1e-5)
    assert len(model.calls) == steps
    assert model.calls[0]["t"][0].item() == 1.0  # starts at pure noise


def test_schedule_is_decreasing_and_shift_favours_high_noise() -> None:
    plain, shifted = FlowMatchingSampler(4).timesteps(), FlowMatchingSampler(4, shift=3.0).timesteps()
    for levels in (plain, shifted):
        assert levels[0] == 1 and levels[-1] == 0 and bool((levels.diff() < 0).all())
    assert bool((shifted[1:-1] > plain[1:-1]).all())


def test_guidance_batches_cond_and_uncond_in_one_forward() -> None:
    video_shape, audio_shape = shapes(batch=3)
    x0_video, x0_audio = torch.randn(video_shape), torch.randn(audio_shape)
    noise = torch.randn(video_shape), torch.randn(audio_shape)
    model = StraightFlow(x0_video, x0_audio, unit_bias=0.5)
    cond = condition(batch=3)
    video, audio = FlowMatchingSampler(4, guidance=3.0).sample(model, cond, *noise)
    assert len(model.calls) == 4
    for call in model.calls:
        assert call["video_noisy"].shape[0] == 6
        assert torch.equal(call["units"][:3], cond["units"])
        assert bool((call["units"][3:] == NULL).all())
        assert torch.equal(call["ref_video"][:3], call["ref_video"][3:])
        assert torch.equal(call["video_noisy"][:3], call["video_noisy"][3:])
    # uncond + 3 * (cond - uncond) turns the 0.5 unit bias into 1.5; audio ignores units.
    expected_video, _ = FlowMatchingSampler(4).sample(StraightFlow(x0_video, x0_audio, unit_bias=1.5), cond, *noise)
    torch.testing.assert_close(video, expected_video, rtol=1e-5, atol=1e-5)
    assert (video - x0_video).abs().max() > 0.1
    torch.testing.assert_close(audio, x0_audio, rtol=1e-5, atol=1e-5)


def test_accepts_a_dataclass_condition() -> None:
    @dataclass
    class Cond:
        units: torch.Tensor
        ref_video: torch.Tensor

    video_shape, audio_shape = shapes()
    x0_video, x0_audio = torch.randn(video_shape), torch.randn(audio_shape)
    model = StraightFlow(x0_video, x0_audio)
    noise = torch.randn(video_shape), torch.randn(audio_shape)
    video, _ = FlowMatchingSampler(2).sample(model, Cond(**condition()), *noise)
    torch.testing.assert_close(video, x0_video, rtol=1e-5, atol=1e-5)


def test_real_model_is_deterministic_given_noise() -> None:
    torch.manual_seed(0)
    config = JointDiTConfig(width=32, depth=2, num_heads=2, num_units=10)
    model = JointAudioVideoDiT(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    B, Fc, m = 2, config.frames_per_chunk, config.mel_per_frame
    C, h, Ca = config.video_channels, config.video_latent_size, config.audio_channels
    cond = {
        "units": torch.randint(0, 10, (B, Fc)),
        "ref_video": torch.randn(B, C, h, h),
        "sink_video": torch.randn(B, Fc, C, h, h),
        "sink_audio": torch.randn(B, Fc * m, Ca),
        "motion_video": torch.randn(B, 2, C, h, h),
        "motion_audio": torch.randn(B, 2 * m, Ca),
        "has_sink": torch.tensor([True, False]),
        "has_motion": torch.tensor([True, False]),
    }

    def sample(seed: int, guidance: float):
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(B, Fc, C, h, h, generator=g), torch.randn(B, Fc * m, Ca, generator=g)
        return FlowMatchingSampler(4, guidance=guidance).sample(model, cond, *noise)

    for guidance in (1.0, 2.5):
        first, again, other = sample(5, guidance), sample(5, guidance), sample(6, guidance)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert not torch.equal(first[0], other[0])
    assert not torch.equal(sample(5, 1.0)[0], sample(5, 2.5)[0])


class PriorFlow(StraightFlow):
    """A StraightFlow in residual space over a fixed audio prior mean, as a prior DiT's audio is."""

    def __init__(self, video_x0: torch.Tensor, audio_x0: torch.Tensor, prior: torch.Tensor) -> None:
        super().__init__(video_x0, audio_x0 - prior)
        self.prior = prior
        self.prior_units: list[torch.Tensor] = []

    def prior_mean(self, units: torch.Tensor, previous_units=None, has_previous=None, next_units=None,
                   has_next=None) -> torch.Tensor:
        self.prior_units.append(units)
        return self.prior


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_a_prior_models_audio_is_denoised_as_a_residual_over_the_prior(guidance: float) -> None:
    video_shape, audio_shape = shapes(batch=3)
    x0_video, x0_audio, prior = torch.randn(video_shape), torch.randn(audio_shape), torch.randn(audio_shape)
    model = PriorFlow(x0_video, x0_audio, prior)
    cond = condition(batch=3)
    video, audio = FlowMatchingSampler(4, guidance=guidance).sample(model, cond, *shapes_noise(video_shape, audio_shape))
    torch.testing.assert_close(audio, x0_audio, rtol=1e-5, atol=1e-5)  # residual + prior
    torch.testing.assert_close(video, x0_video, rtol=1e-5, atol=1e-5)
    assert len(model.prior_units) == 1 and torch.equal(model.prior_units[0], cond["units"])  # real units, once
    copies = 2 if guidance != 1.0 else 1
    for call in model.calls:  # every forward, both CFG branches, sees the same prior mean
        assert torch.equal(call["audio_prior"], torch.cat([prior] * copies))
    # audio_prior_only: the audio is the prior mean alone, the video still the model's
    video, audio = FlowMatchingSampler(4, guidance=guidance, audio_prior_only=True).sample(
        model, cond, *shapes_noise(video_shape, audio_shape))
    torch.testing.assert_close(audio, prior, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(video, x0_video, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="audio prior"):
        FlowMatchingSampler(4, audio_prior_only=True).sample(StraightFlow(x0_video, x0_audio), cond,
                                                              *shapes_noise(video_shape, audio_shape))


def shapes_noise(video_shape, audio_shape):
    g = torch.Generator().manual_seed(4)
    return torch.randn(video_shape, generator=g), torch.randn(audio_shape, generator=g)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        FlowMatchingSampler(0)
    with pytest.raises(ValueError):
        FlowMatchingSampler(4, shift=0.0)


def test_each_temperature_scales_only_its_own_starting_noise() -> None:
    video_shape, audio_shape = shapes()
    seen = []

    class Recorder(StraightFlow):
        def forward(self, video_noisy, audio_noisy, t, units, **context):
            seen.append((video_noisy, audio_noisy))
            return super().forward(video_noisy, audio_noisy, t, units, **context)

    model = Recorder(torch.randn(video_shape), torch.randn(audio_shape))
    noise = shapes_noise(video_shape, audio_shape)
    FlowMatchingSampler(2, audio_temperature=0.5).sample(model, condition(), *noise)
    assert torch.equal(seen[0][0], noise[0]) and torch.equal(seen[0][1], 0.5 * noise[1])
    seen.clear()
    FlowMatchingSampler(2, video_temperature=0.25).sample(model, condition(), *noise)
    assert torch.equal(seen[0][0], 0.25 * noise[0]) and torch.equal(seen[0][1], noise[1])
    with pytest.raises(ValueError, match="audio_temperature"):
        FlowMatchingSampler(2, audio_temperature=-0.1)
    with pytest.raises(ValueError, match="video_temperature"):
        FlowMatchingSampler(2, video_temperature=2.5)


@pytest.mark.parametrize("kwargs, name", [({"guidance": -1.0}, "guidance"), ({"guidance": float("nan")}, "guidance"),
                                          ({"audio_guidance": 10.5}, "audio_guidance")])
def test_cfg_scales_out_of_range_are_refused(kwargs, name) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be in"):
        FlowMatchingSampler(2, **kwargs)


def test_audio_guidance_guides_the_audio_apart_from_the_video() -> None:
    video_shape, audio_shape = shapes()

    class BothBiased(StraightFlow):  # a unit-dependent term on the audio too, so its guidance shows
        def forward(self, video_noisy, audio_noisy, t, units, **context):
            video, audio = super().forward(video_noisy, audio_noisy, t, units, **context)
            return video, audio + self.unit_bias * (units != NULL).float().mean(dim=1).view(-1, 1, 1)

    model = BothBiased(torch.randn(video_shape), torch.randn(audio_shape), unit_bias=0.3)
    noise = shapes_noise(video_shape, audio_shape)
    plain_video, plain_audio = FlowMatchingSampler(4, guidance=1.0).sample(model, condition(), *noise)
    guided_video, guided_audio = FlowMatchingSampler(4, guidance=3.0).sample(model, condition(), *noise)
    video, audio = FlowMatchingSampler(4, guidance=3.0, audio_guidance=1.0).sample(model, condition(), *noise)
    assert not torch.allclose(guided_audio, plain_audio)  # guidance moves the audio when it applies
    torch.testing.assert_close(video, guided_video)
    torch.testing.assert_close(audio, plain_audio)
    # and the other way round: audio guided while the video is not
    video, audio = FlowMatchingSampler(4, guidance=1.0, audio_guidance=3.0).sample(model, condition(), *noise)
    torch.testing.assert_close(video, plain_video)
    torch.testing.assert_close(audio, guided_audio)


class VideoPriorFlow(StraightFlow):
    """A StraightFlow in residual space over a fixed video prior mean, as a video-prior DiT's video is."""

    def __init__(self, video_x0: torch.Tensor, audio_x0: torch.Tensor, video_prior: torch.Tensor) -> None:
        super().__init__(video_x0 - video_prior, audio_x0)
        self.video_prior = video_prior

    def video_prior_mean(self, units, previous_units, has_previous, ref_video, motion_video, has_motion):
        return self.video_prior


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_a_video_prior_models_video_is_a_residual_and_video_prior_only_keeps_the_mean(guidance: float) -> None:
    video_shape, audio_shape = shapes(batch=2)
    x0_video, x0_audio, prior = torch.randn(video_shape), torch.randn(audio_shape), torch.randn(video_shape)
    model = VideoPriorFlow(x0_video, x0_audio, prior)
    cond = condition(batch=2) | {"motion_video": torch.randn(2, 2, 4, 2, 2), "has_motion": torch.tensor([True, False])}
    noise = shapes_noise(video_shape, audio_shape)
    video, audio = FlowMatchingSampler(4, guidance=guidance).sample(model, cond, *noise)
    torch.testing.assert_close(video, x0_video, rtol=1e-5, atol=1e-5)  # residual + prior
    torch.testing.assert_close(audio, x0_audio, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(call["video_prior"], torch.cat([prior] * (2 if guidance != 1.0 else 1)))
               for call in model.calls)
    video, audio = FlowMatchingSampler(4, guidance=guidance, video_prior_only=True).sample(model, cond, *noise)
    torch.testing.assert_close(video, prior, rtol=1e-5, atol=1e-5)  # the mean alone
    torch.testing.assert_close(audio, x0_audio, rtol=1e-5, atol=1e-5)  # the audio is still the model's
    with pytest.raises(ValueError, match="video prior"):
        FlowMatchingSampler(4, video_prior_only=True).sample(StraightFlow(x0_video, x0_audio), cond, *noise)


class BothPriorsFlow(VideoPriorFlow):
    """A VideoPriorFlow whose audio is a residual over a fixed audio prior mean too (PriorFlow's)."""

    prior_mean = PriorFlow.prior_mean

    def __init__(self, video_x0, audio_x0, video_prior, audio_prior) -> None:
        super().__init__(video_x0, audio_x0 - audio_prior, video_prior)
        self.prior, self.prior_units = audio_prior, []


def test_with_both_residuals_held_at_zero_the_sample_is_the_two_means_without_a_model_call() -> None:
    video_shape, audio_shape = shapes(batch=2)
    x0_video, x0_audio = torch.randn(video_shape), torch.randn(audio_shape)
    video_prior, audio_prior = torch.randn(video_shape), torch.randn(audio_shape)
    model = BothPriorsFlow(x0_video, x0_audio, video_prior, audio_prior)
    cond = condition(batch=2) | {"motion_video": torch.randn(2, 2, 4, 2, 2), "has_motion": torch.tensor([True, False])}
    noise = shapes_noise(video_shape, audio_shape)
    video, audio = FlowMatchingSampler(8, guidance=3.0, video_prior_only=True, audio_prior_only=True).sample(
        model, cond, *noise)
    assert torch.equal(video, video_prior) and torch.equal(audio, audio_prior) and not model.calls
    # what the flow with one residual held at zero gives for that modality, the model called
    video, audio = FlowMatchingSampler(8, guidance=3.0, audio_prior_only=True).sample(model, cond, *noise)
    torch.testing.assert_close(audio, audio_prior, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(video, x0_video, rtol=1e-5, atol=1e-5)
    assert model.calls
