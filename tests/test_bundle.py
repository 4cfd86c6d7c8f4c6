"""Checkpoint bundles: saved to safetensors, loaded back exactly, and driving the whole pipeline."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from streamchar.engine.rendering import ChunkJob, RenderEngine
from streamchar.localstack import ROOT, child_env
from streamchar.models.bundle import (
    default_checkpoint,
    load_orchestrator,
    load_renderer,
    read_manifest,
    save_bundle,
    write_manifest,
)
from training.ship import ship

TRAINED = {"orchestrator": True, "dit": True, "video_codec": True}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    lm, vocab, _ = load_orchestrator()
    renderer = load_renderer()
    with torch.no_grad():  # non-zero weights everywhere, so a wrong load cannot pass unnoticed
        for p in renderer.dit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return save_bundle(tmp_path_factory.mktemp("bundle"), "tiny", lm, vocab, renderer, TRAINED), lm, renderer


def test_bundle_round_trip_is_exact(bundle_dir, character_png):
    directory, lm, renderer = bundle_dir
    lm2, vocab2, trained = load_orchestrator(directory)
    assert trained
    ids = torch.tensor([[vocab2.bos_id, *vocab2.text_ids("Hello"), vocab2.speak_id]])
    torch.testing.assert_close(lm2(ids), lm(ids), rtol=0, atol=0)
    renderer2 = load_renderer(directory)
    assert renderer2.trained

    def render(models):
        from streamchar.session import decode_reference

        job = ChunkJob(units=[1, 2, 3, 4, 5, 6, 7, 8], seed=5, ref_image=decode_reference(character_png, 64),
                       ref_latent=None, sink_video=None, sink_audio=None, motion_video=None, motion_audio=None)
        return RenderEngine(models, 2, 1.0, 1, ThreadPoolExecutor(1)).render_batch([job])[0]

    a, b = render(renderer), render(renderer2)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.pcm, b.pcm)


def test_incompatible_bundle_is_rejected(bundle_dir, tmp_path):
    directory, _, _ = bundle_dir
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    config = json.loads((broken / "audio_codec.json").read_text())
    (broken / "audio_codec.json").write_text(json.dumps({**config, "n_mels": 80}))
    with pytest.raises(ValueError, match="audio channels"):
        load_renderer(broken)
    with pytest.raises(FileNotFoundError):
        load_renderer(tmp_path / "empty")


def test_say_uses_a_given_bundle(bundle_dir, tmp_path):
    directory, _, _ = bundle_dir
    out = tmp_path / "b.mp4"
    proc = subprocess.run([sys.executable, "-m", "streamchar", "say", "From a bundle.", "--checkpoint", str(directory),
                           "-o", str(out), "-q"], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "UNTRAINED" not in proc.stdout and out.stat().st_size > 0


def test_random_init_is_deterministic():
    a, b = load_renderer(), load_renderer()
    for (name, p), q in zip(a.dit.state_dict().items(), b.dit.state_dict().values()):
        assert torch.equal(p, q), name
    assert dataclasses.asdict(a.dit.config) == dataclasses.asdict(b.dit.config)


def test_shipping_a_warm_started_part_keeps_the_record_of_the_weights_it_continued(tmp_path):
    into = tmp_path / "bundle"
    shutil.copytree(default_checkpoint("tiny"), into)

    def export(name: str, init_from: str):
        directory = tmp_path / name
        shutil.copytree(into / "orchestrator", directory / "orchestrator")
        write_manifest(directory, {"training": {"orchestrator": {"steps": 7, "config": {"run": {"init_from": init_from}}}}})
        return directory

    cold = ship(into, lm=export("cold", ""))["training"]["orchestrator"]
    assert cold["steps"] == 7 and "warm_started_from" not in cold  # trained from scratch: nothing continued
    warm = ship(into, lm=export("warm", str(into / "orchestrator")))["training"]["orchestrator"]
    assert warm["steps"] == 7 and warm["warm_started_from"] == cold
    # A run warm-started from another run's export, itself continuing the bundle's: the chain is kept.
    first = export("first", str(into / "orchestrator"))
    second = ship(into, lm=export("second", str(first)))["training"]["orchestrator"]
    assert second["warm_started_from"]["config"]["run"]["init_from"] == str(into / "orchestrator")
    assert second["warm_started_from"]["warm_started_from"] == warm


def test_a_bundle_holds_the_teacher_and_students_side_by_side(bundle_dir, tmp_path):
    """ship --teacher moves the bundle's own dit/ (and its record) to teacher/; a student replaces dit/;
    the renderer loads either by name and refuses a name the bundle lacks."""
    from streamchar.models.bundle import dit_variants
    from streamchar.models.io import save_module

    directory, _, renderer = bundle_dir
    into = tmp_path / "bundle"
    shutil.copytree(directory, into)
    shutil.copytree(default_checkpoint("tiny") / "units", into / "units")  # save_bundle writes no tokenizer
    write_manifest(into, {**read_manifest(into), "training": {"dit": {"steps": 11}}})
    student = tmp_path / "student"
    shutil.copytree(into, student)
    with torch.no_grad():
        weights = {k: v + 0.01 for k, v in renderer.dit.state_dict().items()}
    dit = load_renderer(student).dit
    dit.load_state_dict(weights)
    save_module(dit, dit.config, student / "dit")
    write_manifest(student, {**read_manifest(student), "training": {"dit": {"stage": "distill-2", "steps": 3}}})

    manifest = ship(into, dit=student, teacher=into, variants={"dit-nopointer": student})
    assert manifest["training"]["teacher"] == {"steps": 11}
    assert manifest["training"]["dit"]["stage"] == "distill-2" and manifest["trained"]["teacher"]
    assert manifest["training"]["dit-nopointer"]["stage"] == "distill-2"
    assert dit_variants(into) == ["dit", "dit-nopointer", "teacher"]
    with pytest.raises(SystemExit, match="dit-NAME"):
        ship(into, variants={"teacher2": student})
    teacher, default = load_renderer(into, dit="teacher"), load_renderer(into)
    assert teacher.trained and default.trained
    for name, value in renderer.dit.state_dict().items():
        assert torch.equal(teacher.dit.state_dict()[name], value), name
        assert torch.equal(default.dit.state_dict()[name], weights[name]), name
    with pytest.raises(FileNotFoundError, match="holds"):
        load_renderer(into, dit="dit-stage1")
    with pytest.raises(ValueError, match="subdirectory"):
        load_renderer(into, dit="../bundle")


def test_without_the_sink_the_dit_sees_none(bundle_dir, character_png):
    """RenderEngine(sink=False) renders a later chunk exactly as if the session had no sink chunk."""
    from streamchar.session import decode_reference

    _, _, renderer = bundle_dir
    tb = renderer.time_base
    g = np.random.default_rng(0)
    shape = (renderer.dit.config.video_channels, renderer.dit.config.video_latent_size,
             renderer.dit.config.video_latent_size)
    mels = tb.mel_per_frame * tb.frames_per_chunk, renderer.dit.config.audio_channels
    context = dict(ref_latent=None, motion_video=g.standard_normal((tb.motion_frames, *shape), np.float32),
                   motion_audio=g.standard_normal((tb.motion_frames * tb.mel_per_frame, mels[1]), np.float32))
    sink = dict(sink_video=g.standard_normal((tb.frames_per_chunk, *shape), np.float32),
                sink_audio=g.standard_normal(mels, np.float32))
    ref = decode_reference(character_png, 64)

    def render(sink_fields: dict, use_sink: bool):
        fields = {"sink_video": None, "sink_audio": None, **sink_fields}
        job = ChunkJob(units=[1, 2, 3, 4, 5, 6, 7, 8], seed=5, ref_image=ref, **context, **fields)
        return RenderEngine(renderer, 2, 1.0, 1, ThreadPoolExecutor(1), sink=use_sink).render_batch([job])[0]

    with_sink, ignored, absent = render(sink, True), render(sink, False), render({}, True)
    np.testing.assert_array_equal(ignored.video_latents, absent.video_latents)
    assert np.abs(with_sink.video_latents - absent.video_latents).max() > 1e-4
