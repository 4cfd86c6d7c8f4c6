"""Joint DiT: shapes, context masking, batch independence, unit alignment, checkpoints, CFG dropout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from streamchar.models.io import CheckpointError, load_module, save_module
from streamchar.models.joint_dit import PRESETS, JointAudioVideoDiT, JointDiTConfig

CONFIG = JointDiTConfig(width=32, depth=2, num_heads=2, num_units=10)


def randomized_model(config: JointDiTConfig = CONFIG, seed: int = 0) -> JointAudioVideoDiT:
    """The zero-initialised outputs would make every comparison trivially equal."""
    torch.manual_seed(seed)
    model = JointAudioVideoDiT(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def make_inputs(config: JointDiTConfig = CONFIG, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    Fc, Fm, m = config.frames_per_chunk, config.motion_frames, config.mel_per_frame
    C, h, Ca = config.video_channels, config.video_latent_size, config.audio_channels

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    return {
        "video_noisy": randn(batch, Fc, C, h, h),
        "audio_noisy": randn(batch, Fc * m, Ca),
        "t": torch.rand(batch, generator=g),
        "units": torch.randint(0, config.num_units, (batch, Fc), generator=g),
        "ref_video": randn(batch, C, h, h),
        "sink_video": randn(batch, Fc, C, h, h),
        "sink_audio": randn(batch, Fc * m, Ca),
        "motion_video": randn(batch, Fm, C, h, h),
        "motion_audio": randn(batch, Fm * m, Ca),
        "has_sink": torch.ones(batch, dtype=torch.bool),
        "has_motion": torch.ones(batch, dtype=torch.bool),
    }


def run(model: JointAudioVideoDiT, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model(**inputs)


def test_output_shapes_and_zero_init() -> None:
    model = JointAudioVideoDiT(CONFIG).eval()
    inputs = make_inputs(batch=3)
    video, audio = run(model, inputs)
    assert video.shape == inputs["video_noisy"].shape
    assert audio.shape == inputs["audio_noisy"].shape
    # adaLN-Zero + zero final layers: an untrained model predicts zero velocity.
    assert video.abs().max() == 0 and audio.abs().max() == 0


def test_last_block_computing_only_the_noisy_tokens_is_exact(monkeypatch) -> None:
    """The last block computes only the read-out tokens; the same model with every token computed by
    every block (queries dropped) must give the same velocities."""
    model = randomized_model()
    inputs = make_inputs(batch=2)
    pruned = run(model, inputs)
    last = model.blocks[-1]
    full_forward = type(last).forward
    noisy = model.readout_tokens

    def full_then_select(self, x, c, attn_mask, queries=None):  # noqa: ANN001, ANN202
        out = full_forward(self, x, c, attn_mask)
        return out if queries is None else out[:, queries]

    monkeypatch.setattr(type(last), "forward", full_then_select)
    full = run(model, inputs)
    assert noisy.numel() == CONFIG.frames_per_chunk * (CONFIG.patches_per_frame + CONFIG.mel_per_frame)
    for a, b in zip(pruned, full):
        assert a.abs().max() > 0.1
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_rejects_wrong_chunk_length() -> None:
    inputs = make_inputs()
    inputs["audio_noisy"] = inputs["audio_noisy"][:, :-1]
    with pytest.raises(ValueError, match="audio_noisy"):
        run(randomized_model(), inputs)


@pytest.mark.parametrize(
    "flag, keys", [("has_sink", ("sink_video", "sink_audio")), ("has_motion", ("motion_video", "motion_audio"))]
)
def test_absent_context_has_no_influence(flag: str, keys: tuple[str, ...]) -> None:
    model = randomized_model()
    inputs = make_inputs()
    changed = dict(inputs)
    for key in keys:
        changed[key] = inputs[key] + 3.0 * torch.randn_like(inputs[key])

    inputs[flag] = changed[flag] = torch.zeros(2, dtype=torch.bool)
    for a, b in zip(run(model, inputs), run(model, changed)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    inputs[flag] = changed[flag] = torch.ones(2, dtype=torch.bool)
    for a, b in zip(run(model, inputs), run(model, changed)):
        assert (a - b).abs().max() > 1e-3


def test_context_flag_itself_changes_output() -> None:
    model = randomized_model()
    inputs = make_inputs()
    without = dict(inputs, has_sink=torch.zeros(2, dtype=torch.bool))
    assert (run(model, inputs)[0] - run(model, without)[0]).abs().max() > 1e-3


def test_batch_rows_are_independent() -> None:
    model = randomized_model()
    inputs = make_inputs(batch=2)
    inputs["has_sink"] = torch.tensor([True, False])
    alone = {key: value[:1] for key, value in inputs.items()}
    other = make_inputs(batch=2, seed=7)
    mixed = {key: torch.cat([inputs[key][:1], other[key][1:]]) for key in inputs}

    reference = run(model, alone)
    for batched in (run(model, inputs), run(model, mixed)):
        for a, b in zip(reference, batched):
            torch.testing.assert_close(a, b[:1], rtol=1e-5, atol=1e-5)


def test_units_condition_their_own_frame_tokens() -> None:
    model = randomized_model()
    inputs = make_inputs(batch=1)
    frame = 3
    changed = dict(inputs, units=inputs["units"].clone())
    changed["units"][0, frame] = (inputs["units"][0, frame] + 1) % CONFIG.num_units

    captured = []
    hook = model.blocks[0].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    outputs, changed_outputs = run(model, inputs), run(model, changed)
    hook.remove()

    touched = (captured[0] - captured[1]).abs().amax(dim=-1)[0] > 0  # [N]
    T, m = CONFIG.patches_per_frame, CONFIG.mel_per_frame
    expected = torch.zeros_like(touched)
    expected[frame * T : (frame + 1) * T] = True  # that frame's noisy video patches
    audio_start = model.num_video_tokens
    expected[audio_start + frame * m : audio_start + (frame + 1) * m] = True  # its mel frames
    assert torch.equal(touched, expected)
    # Attention then spreads the change to the whole chunk.
    for a, b in zip(outputs, changed_outputs):
        assert (a - b).abs().max() > 1e-3


def test_silence_and_null_ids_are_valid_and_distinct() -> None:
    model = randomized_model()
    inputs = make_inputs(batch=1)
    silence = dict(inputs, units=torch.full_like(inputs["units"], CONFIG.silence_unit))
    null = dict(inputs, units=torch.full_like(inputs["units"], model.null_unit))
    assert model.null_unit == CONFIG.num_units + 1
    assert (run(model, silence)[1] - run(model, null)[1]).abs().max() > 1e-3
    with pytest.raises(IndexError):
        run(model, dict(inputs, units=torch.full_like(inputs["units"], CONFIG.num_units + 2)))


def test_save_load_round_trip(tmp_path) -> None:
    model = randomized_model()
    save_module(model, model.config, tmp_path)
    loaded = load_module(JointAudioVideoDiT, tmp_path)
    assert loaded.config == model.config and not loaded.training
    inputs = make_inputs()
    for a, b in zip(run(model, inputs), run(loaded, inputs)):
        assert torch.equal(a, b)


def test_load_rejects_mismatched_checkpoints(tmp_path) -> None:
    model = randomized_model()
    save_module(model, model.config, tmp_path)
    config_file = tmp_path / "config.json"
    original = config_file.read_text()

    config_file.write_text(original.replace('"depth": 2', '"depth": 3'))
    with pytest.raises(CheckpointError, match="missing"):
        load_module(JointAudioVideoDiT, tmp_path)

    config_file.write_text(original.replace('"depth": 2', '"depth": 2, "dropout_p": 0.1'))
    with pytest.raises(CheckpointError, match="dropout_p"):
        load_module(JointAudioVideoDiT, tmp_path)


def test_cfg_dropout_rate_and_whole_samples() -> None:
    model = JointAudioVideoDiT(CONFIG)
    units = torch.randint(0, CONFIG.num_units, (20_000, CONFIG.frames_per_chunk))
    dropped = model.drop_units_for_cfg(units, 0.3, torch.Generator().manual_seed(0))
    is_null = dropped == model.null_unit
    rows_null = is_null.all(dim=1)
    assert torch.equal(is_null.any(dim=1), rows_null)  # never partial
    assert torch.equal(dropped[~rows_null], units[~rows_null])
    assert abs(rows_null.float().mean().item() - 0.3) < 0.02
    assert torch.equal(model.drop_units_for_cfg(units, 0.0), units)


def test_training_forward_applies_cond_dropout() -> None:
    config = JointDiTConfig(width=32, depth=2, num_heads=2, num_units=10, cond_dropout=1.0)
    model = randomized_model(config)
    inputs = make_inputs(config)
    null = dict(inputs, units=torch.full_like(inputs["units"], model.null_unit))
    expected = run(model, null)
    model.train()
    for a, b in zip(run(model, inputs), expected):
        torch.testing.assert_close(a, b)


def test_presets_build_consistent_configs() -> None:
    assert set(PRESETS) == {"tiny", "paper"}
    paper = PRESETS["paper"]
    assert paper.patches_per_frame == 256 and paper.width % paper.num_heads == 0
    JointAudioVideoDiT(PRESETS["tiny"])


# ---- the audio prior ------------------------------------------------------------------------------

PRIOR_CONFIG = JointDiTConfig(width=32, depth=2, num_heads=2, num_units=10, prior_layers=2)


def test_prior_mean_is_per_chunk_and_sees_only_the_chunks_units() -> None:
    model = randomized_model(PRIOR_CONFIG)
    units = make_inputs(PRIOR_CONFIG)["units"]
    with torch.no_grad():
        mean = model.prior_mean(units)
        assert mean.shape == (2, PRIOR_CONFIG.frames_per_chunk * PRIOR_CONFIG.mel_per_frame, PRIOR_CONFIG.audio_channels)
        changed = units.clone()
        changed[0, -1] = (changed[0, -1] + 1) % PRIOR_CONFIG.num_units
        other = model.prior_mean(changed)
    m, reach = PRIOR_CONFIG.mel_per_frame, PRIOR_CONFIG.prior_layers * (PRIOR_CONFIG.prior_kernel // 2)
    assert torch.equal(other[1], mean[1])  # rows are independent
    assert not torch.equal(other[0, -m:], mean[0, -m:])  # the last frame's own mels follow its unit
    first_reached = PRIOR_CONFIG.frames_per_chunk - 1 - reach
    assert torch.equal(other[0, : first_reached * m], mean[0, : first_reached * m])  # beyond the convs' reach
    assert JointAudioVideoDiT(CONFIG).prior_mean(units) is None


def test_a_prior_dit_needs_the_prior_mean_and_a_plain_one_refuses_it() -> None:
    inputs = make_inputs(PRIOR_CONFIG)
    model = randomized_model(PRIOR_CONFIG)
    with pytest.raises(ValueError, match="audio_prior is required"):
        run(model, inputs)
    with torch.no_grad():
        prior = model.prior_mean(inputs["units"])
    video, audio = run(model, dict(inputs, audio_prior=prior))
    assert video.shape == inputs["video_noisy"].shape and audio.shape == inputs["audio_noisy"].shape
    # the noisy audio tokens see the prior mean
    assert not torch.equal(run(model, dict(inputs, audio_prior=prior + 1))[1], audio)
    with pytest.raises(ValueError, match="no prior"):
        run(randomized_model(CONFIG), dict(make_inputs(CONFIG), audio_prior=prior))


def test_a_prior_dit_warm_started_from_a_plain_one_starts_as_it(tmp_path) -> None:
    """The prior's input projection starts at zero: the plain DiT's weights give the same velocities."""
    from training.trainers.runtime import warm_start

    plain = randomized_model(CONFIG)
    save_module(plain, plain.config, tmp_path)
    torch.manual_seed(3)
    prior_dit = JointAudioVideoDiT(dataclasses.replace(CONFIG, prior_layers=2)).eval()
    report = warm_start(prior_dit, tmp_path)
    assert all(name.startswith(("prior.", "prior_embed.")) for name in report["fresh"]) and report["fresh"]
    inputs = make_inputs(CONFIG)
    with torch.no_grad():
        prior = prior_dit.prior_mean(inputs["units"])
    for a, b in zip(run(plain, inputs), run(prior_dit, dict(inputs, audio_prior=prior))):
        torch.testing.assert_close(a, b)


def test_prior_config_is_validated() -> None:
    with pytest.raises(ValueError, match="prior"):
        JointDiTConfig(prior_layers=-1)
    with pytest.raises(ValueError, match="prior"):
        JointDiTConfig(prior_layers=2, prior_kernel=4)


def test_a_context_prior_reads_the_previous_chunks_last_units_only_when_there_is_one() -> None:
    config = dataclasses.replace(PRIOR_CONFIG, prior_context=3)
    model = randomized_model(config)
    inputs = make_inputs(config)
    units = inputs["units"]
    previous = torch.randint(0, config.num_units, units.shape, generator=torch.Generator().manual_seed(5))
    yes, no = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        base = model.prior_mean(units, previous, yes)
        changed_early = previous.clone()
        changed_early[:, : config.frames_per_chunk - 3] += 1  # outside the 3 frames read
        assert torch.equal(model.prior_mean(units, changed_early % config.num_units, yes), base)
        changed_late = previous.clone()
        changed_late[:, -1] = (changed_late[:, -1] + 1) % config.num_units
        assert not torch.equal(model.prior_mean(units, changed_late, yes)[:, :4], base[:, :4])
        # without a previous chunk the previous units are not read at all
        assert torch.equal(model.prior_mean(units, previous, no), model.prior_mean(units, changed_late, no))
        assert not torch.equal(model.prior_mean(units, previous, no), base)
        with pytest.raises(ValueError, match="previous chunk"):
            model.prior_mean(units)
        # the forward takes the previous units with the other conditions (only the prior reads them)
        run(model, dict(inputs, previous_units=previous, audio_prior=base))
    with pytest.raises(ValueError, match="prior_context"):
        JointDiTConfig(prior_context=2)


def test_a_lookahead_prior_reads_the_next_chunks_first_units_when_they_are_known() -> None:
    config = dataclasses.replace(PRIOR_CONFIG, prior_context=2, prior_lookahead=3)
    model = randomized_model(config)
    inputs = make_inputs(config)
    units, Fc, m = inputs["units"], config.frames_per_chunk, config.mel_per_frame
    g = torch.Generator().manual_seed(6)
    previous, ahead = (torch.randint(0, config.num_units, units.shape, generator=g) for _ in range(2))
    yes, no = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        base = model.prior_mean(units, previous, yes, ahead, yes)
        beyond = ahead.clone()
        beyond[:, 3:] = (beyond[:, 3:] + 1) % config.num_units  # outside the 3 frames read
        assert torch.equal(model.prior_mean(units, previous, yes, beyond, yes), base)
        first = ahead.clone()
        first[:, 0] = (first[:, 0] + 1) % config.num_units
        changed = model.prior_mean(units, previous, yes, first, yes)
        assert not torch.equal(changed[:, -m:], base[:, -m:])  # the chunk's last frame hears what follows
        # not known (has_next False, or no next units at all): the padding id, whatever next_units hold
        unknown = model.prior_mean(units, previous, yes, ahead, no)
        assert torch.equal(unknown, model.prior_mean(units, previous, yes, first, no))
        assert torch.equal(unknown, model.prior_mean(units, previous, yes))
        assert not torch.equal(unknown, base)
        # the forward takes the next units with the other conditions (only the prior reads them)
        run(model, dict(inputs, previous_units=previous, next_units=ahead, has_next=yes, audio_prior=base))
        # a prior without lookahead never reads them
        plain = randomized_model(dataclasses.replace(config, prior_lookahead=0))
        assert torch.equal(plain.prior_mean(units, previous, yes, ahead, yes), plain.prior_mean(units, previous, yes))
    with pytest.raises(ValueError, match="prior_lookahead"):
        JointDiTConfig(prior_lookahead=2)  # no prior
    with pytest.raises(ValueError, match="prior_lookahead"):
        dataclasses.replace(config, prior_lookahead=Fc + 1)


# ---- the video prior ------------------------------------------------------------------------------

VIDEO_PRIOR_CONFIG = JointDiTConfig(width=32, depth=2, num_heads=2, num_units=10, video_prior_layers=2,
                                    video_prior_width=16)


def video_prior_inputs(inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (inputs["units"], None, None, inputs["ref_video"], inputs["motion_video"], inputs["has_motion"])


def test_an_unfitted_video_prior_predicts_the_context_frame() -> None:
    """Zero output: every frame's mean is the last motion frame, or the reference without motion."""
    model = JointAudioVideoDiT(VIDEO_PRIOR_CONFIG).eval()
    inputs = make_inputs(VIDEO_PRIOR_CONFIG, batch=2)
    inputs["has_motion"] = torch.tensor([True, False])
    with torch.no_grad():
        mean = model.video_prior_mean(*video_prior_inputs(inputs))
    Fc = VIDEO_PRIOR_CONFIG.frames_per_chunk
    assert mean.shape == inputs["video_noisy"].shape
    assert torch.equal(mean[0], inputs["motion_video"][0, -1].expand(Fc, -1, -1, -1))
    assert torch.equal(mean[1], inputs["ref_video"][1].expand(Fc, -1, -1, -1))
    assert JointAudioVideoDiT(CONFIG).video_prior_mean(*video_prior_inputs(inputs)) is None


def test_the_video_prior_follows_each_frames_units_and_the_dit_sees_it() -> None:
    model = randomized_model(VIDEO_PRIOR_CONFIG)
    inputs = make_inputs(VIDEO_PRIOR_CONFIG)
    with torch.no_grad():
        mean = model.video_prior_mean(*video_prior_inputs(inputs))
        changed = dict(inputs, units=inputs["units"].clone())
        changed["units"][0, 0] = (changed["units"][0, 0] + 1) % VIDEO_PRIOR_CONFIG.num_units
        other = model.video_prior_mean(*video_prior_inputs(changed))
    assert torch.equal(other[1], mean[1])  # rows are independent
    assert not torch.equal(other[0, 0], mean[0, 0])  # the frame's own unit moves its mean
    # two 5-wide unit convolutions reach 4 frames: the chunk's last frame does not hear its first unit
    assert torch.equal(other[0, -1], mean[0, -1])
    rows, cols = VIDEO_PRIOR_CONFIG.video_prior_cells  # outside its box the mean is the context frame
    outside = torch.ones(mean.shape[-2:], dtype=torch.bool)
    outside[rows, cols] = False
    context = inputs["motion_video"][:, -1:].expand_as(mean)
    assert torch.equal(mean[..., outside], context[..., outside]) and not torch.equal(mean, context)
    with pytest.raises(ValueError, match="video_prior is required"):
        run(model, inputs)
    video, _ = run(model, dict(inputs, video_prior=mean))
    assert not torch.equal(run(model, dict(inputs, video_prior=mean + 1))[0], video)  # the noisy tokens see it
    with pytest.raises(ValueError, match="no video prior"):
        run(randomized_model(CONFIG), dict(make_inputs(CONFIG), video_prior=mean))
    with pytest.raises(ValueError, match="video_prior"):
        JointDiTConfig(video_prior_layers=1, video_prior_width=12)
    with pytest.raises(ValueError, match="video_prior_box"):
        JointDiTConfig(video_prior_layers=1, video_prior_box=(0.5, 0.5, 0.6, 0.2))


def test_a_video_prior_dit_warm_started_from_a_plain_one_starts_as_it(tmp_path) -> None:
    from training.trainers.runtime import warm_start

    plain = randomized_model(CONFIG)
    save_module(plain, plain.config, tmp_path)
    torch.manual_seed(3)
    model = JointAudioVideoDiT(dataclasses.replace(CONFIG, video_prior_layers=1, video_prior_width=16)).eval()
    report = warm_start(model, tmp_path)
    assert report["fresh"] and all(name.startswith(("video_prior.", "video_prior_embed.")) for name in report["fresh"])
    inputs = make_inputs(CONFIG)
    with torch.no_grad():
        mean = model.video_prior_mean(*video_prior_inputs(inputs))
    for a, b in zip(run(plain, inputs), run(model, dict(inputs, video_prior=mean))):
        torch.testing.assert_close(a, b)


def test_the_audio_prior_can_be_wider_than_the_dit() -> None:
    config = dataclasses.replace(PRIOR_CONFIG, prior_width=48)
    model = randomized_model(config)
    assert model.prior.convs[0].weight.shape[:2] == (48, 48) and model.prior.embed.weight.shape[1] == 48
    inputs = make_inputs(config)
    mean = model.prior_mean(inputs["units"])
    assert mean.shape == inputs["audio_noisy"].shape
    run(model, dict(inputs, audio_prior=mean))
    with pytest.raises(ValueError, match="prior_width"):
        dataclasses.replace(PRIOR_CONFIG, prior_width=-1)
