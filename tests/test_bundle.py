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
