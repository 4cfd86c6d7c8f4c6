"""The visual encoder: shapes and resizing, ROC-AUC, the shipped checkpoint's identity separation and
Fréchet sensitivity on freshly generated test-split samples, and checkpoint round trips."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from streamchar.models.io import save_module
from training.data.characters import reference_image
from training.data.corpus import CorpusConfig, SampleGenerator
from training.data.schema import Sample
from training.eval.stability import frechet_distance
from training.eval.visual import (
    DEFAULT_CHECKPOINT,
    VisualEncoder,
    VisualEncoderConfig,
    add_noise,
    evaluate_identity,
    frechet_features,
    frechet_sanity,
    gaussian_blur,
    identity_embeddings,
    identity_similarity,
    load_visual,
    roc_auc,
    train_visual,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these models are small, and thread hand-offs cost more than they bring on a busy CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def test_samples() -> list[Sample]:
    """Eight test-split samples of distinct identities (never seen in training), generated in-process."""
    generator = SampleGenerator(CorpusConfig())
    samples, seen = [], set()
    for i in itertools.count():
        s = generator.generate("test", i)
        if s.character["identity_id"] not in seen:
            seen.add(s.character["identity_id"])
            samples.append(s)
        if len(samples) == 8:
            return samples
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def shipped() -> VisualEncoder:
    return load_visual()


@pytest.fixture(scope="module")
def untrained() -> VisualEncoder:
    torch.manual_seed(0)
    return VisualEncoder(VisualEncoderConfig(num_classes=5)).eval()


# ---- configuration, shapes, resizing ----------------------------------------------------------------

def test_config_limits_feature_dim():
    config = VisualEncoderConfig(num_classes=3)
    assert config.feature_dim == sum(config.feature_blocks) <= 128
    with pytest.raises(ValueError):
        VisualEncoderConfig(num_classes=3, frechet_stages=(0, 1, 2))  # 32 + 48 + 96 + 9 + 48 > 128
    with pytest.raises(ValueError):
        VisualEncoderConfig(num_classes=0)


def test_shapes_norms_and_resizing(untrained):
    c = untrained.config
    rng = np.random.default_rng(0)
    for size in (64, 48, 96):
        frames = rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
        emb, feats = untrained(torch.from_numpy(frames))
        assert emb.shape == (5, c.embed_dim) and feats.shape == (5, c.feature_dim)
        np.testing.assert_allclose(emb.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)
        e = identity_embeddings(untrained, frames, batch_size=2)  # batching does not change results
        f = frechet_features(untrained, frames, batch_size=2)
        assert e.dtype == np.float32 and e.shape == (5, c.embed_dim)
        assert f.dtype == np.float64 and f.shape == (5, c.feature_dim)
        np.testing.assert_allclose(e, emb.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(identity_embeddings(untrained, frames[::-1]), e[::-1], atol=1e-5)  # any view
        # Floats are read in the same 0..255 units as uint8.
        emb_float, _ = untrained(torch.from_numpy(frames).float())
        torch.testing.assert_close(emb_float, emb)
    with pytest.raises(ValueError):
        untrained(torch.zeros(2, 3, 64, 64))  # channels-first is rejected


def test_resized_inputs_embed_like_the_original(shipped, test_samples):
    frames = test_samples[0].frames[::20]
    big = frames.repeat(2, axis=1).repeat(2, axis=2)  # 128 px, nearest-neighbour
    cos = (identity_embeddings(shipped, frames) * identity_embeddings(shipped, big)).sum(1)
    assert cos.min() > 0.95
    own = identity_similarity(shipped, big, reference_image(test_samples[0].character))
    other = identity_similarity(shipped, big, reference_image(test_samples[1].character))
    assert own.min() > other.max()


# ---- ROC-AUC -----------------------------------------------------------------------------------------

def test_roc_auc_known_cases():
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert roc_auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    x = np.random.default_rng(0).normal(size=200)
    assert roc_auc(x, x) == 0.5
    assert roc_auc([1.0, 1.0], [1.0, 0.0]) == 0.75  # each tie counts 1/2
    assert roc_auc([5.0], [5.0, 5.0, 5.0]) == 0.5
    with pytest.raises(ValueError):
        roc_auc([], [1.0])


def test_roc_auc_matches_pairwise_count():
    rng = np.random.default_rng(1)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 55).astype(float)  # many ties
    brute = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(pos, neg) == pytest.approx(brute, abs=1e-12)


# ---- the shipped checkpoint --------------------------------------------------------------------------

def test_shipped_checkpoint_is_small_and_frozen(shipped):
    size = sum(f.stat().st_size for f in DEFAULT_CHECKPOINT.iterdir() if f.is_file())
    assert size <= 5e6
    assert shipped.config.feature_dim <= 128
    assert not shipped.training
    assert not any(p.requires_grad for p in shipped.parameters())


def test_shipped_separates_unseen_identities(shipped, test_samples):
    result = evaluate_identity(shipped, test_samples, frames_per_sample=8)
    assert result["identities"] == 8 and result["reference_positive_pairs"] == 64
    assert result["roc_auc_reference"] >= 0.9
    assert result["roc_auc_frames"] >= 0.9
    assert result["mean_same_reference"] > result["mean_different_reference"] + 0.3
    # Every clip is, on average, closer to its own reference than to any other identity's.
    refs = [reference_image(s.character) for s in test_samples]
    for i, s in enumerate(test_samples):
        own = identity_similarity(shipped, s.frames[::15], refs[i])
        others = identity_embeddings(shipped, np.stack(refs[:i] + refs[i + 1:])).astype(np.float64)
        mean_others = (identity_embeddings(shipped, s.frames[::15]).astype(np.float64) @ others.T).mean(0)
        assert own.mean() > mean_others.max()


def test_shipped_frechet_grows_with_blur_and_noise(shipped, test_samples):
    # Clean halves: every other frame of the first and of the second half of every clip (same
    # characters, other frames), a few hundred frames each.
    first = np.concatenate([s.frames[:s.num_frames // 2:2] for s in test_samples])
    second = np.concatenate([s.frames[s.num_frames // 2::2] for s in test_samples])
    assert len(first) > 2 * shipped.config.feature_dim
    ref = frechet_features(shipped, second)

    def fd(frames: np.ndarray) -> float:
        return frechet_distance(frechet_features(shipped, frames), ref)

    floor = fd(first)
    blur_1, blur_2 = fd(gaussian_blur(first, 1.0)), fd(gaussian_blur(first, 2.0))
    noise_10, noise_25 = fd(add_noise(first, 10.0)), fd(add_noise(first, 25.0))
    assert floor < blur_1 < blur_2
    assert floor < noise_10 < noise_25
    assert blur_1 > 2 * floor and noise_25 > 2 * floor


def test_frechet_sanity_table(shipped, test_samples):
    # Identities 0-2 get a second clip (their frames reversed), 3-5 keep one: the identity swap's pool.
    second_clips = [dataclasses.replace(s, sample_id=s.sample_id + "-b", frames=s.frames[::-1])
                    for s in test_samples[:3]]
    table = frechet_sanity(shipped, test_samples[:6] + second_clips, frames_per_set=150)
    assert table["frames_a"] == table["frames_b"] == 150
    assert table["floor"] < table["blur_1"] < table["blur_2"]
    assert table["floor"] < table["noise_10"] < table["noise_25"]
    assert table["identity_swap"] > 2 * table["floor"]
    with pytest.raises(ValueError):  # all identities distinct: no halves to compare
        frechet_sanity(shipped, test_samples)


def test_corruption_helpers():
    flat = np.full((2, 16, 16, 3), 100, np.uint8)
    np.testing.assert_array_equal(gaussian_blur(flat, 2.0), flat)  # a constant image stays constant
    noisy = add_noise(flat, 10.0, seed=3).astype(float)
    assert abs(noisy.std() - 10.0) < 0.5 and abs(noisy.mean() - 100.0) < 0.5


# ---- training and checkpoints -----------------------------------------------------------------------

def test_train_save_load_round_trip(test_samples, tmp_path):
    model = train_visual(test_samples[:4], steps=3, batch_size=16, stats_frames=64, log_every=0, out_dir=tmp_path)
    assert model.config.num_classes == 4 and not model.training
    assert not torch.equal(model.feature_std, torch.ones_like(model.feature_std))  # the standardisation was fitted
    loaded = load_visual(tmp_path)
    frames = test_samples[5].frames[:16]
    for a, b in zip(model(torch.from_numpy(frames)), loaded(torch.from_numpy(frames))):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in loaded.parameters())
    # A model saved by hand round-trips too, buffers included.
    other = VisualEncoder(VisualEncoderConfig(num_classes=2)).eval()
    other.feature_mean.normal_()
    save_module(other, other.config, tmp_path / "other")
    again = load_visual(tmp_path / "other")
    assert torch.equal(again.feature_mean, other.feature_mean)
    for a, b in zip(other(torch.from_numpy(frames)), again(torch.from_numpy(frames))):
        assert torch.equal(a, b)
