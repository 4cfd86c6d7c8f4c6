"""The synthetic corpus: deterministic bytes, held-out splits, shards and loaders."""

from __future__ import annotations

import filecmp
import subprocess
import sys

import numpy as np
import pytest
import torch

from streamchar.localstack import ROOT, child_env
from streamchar.models.io import load_module, save_module
from streamchar.models.units import UnitTokenizer
from streamchar.timebase import TimeBase
from training.data.corpus import (
    SPLITS,
    CorpusConfig,
    SampleGenerator,
    ShardDataset,
    StreamingCorpus,
    pool,
    write_corpus,
)

TB = TimeBase()
SMALL = CorpusConfig(seed=3, train_samples=5, val_samples=2, test_samples=3, samples_per_shard=2)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, SMALL, progress=False)
    return root


def test_same_seed_gives_identical_bytes(small_corpus, tmp_path):
    again = tmp_path / "again"
    write_corpus(again, SMALL, progress=False, workers=2)  # shards from two processes, in any order
    files = sorted(p.relative_to(small_corpus) for p in small_corpus.rglob("*") if p.is_file())
    assert len(files) == 1 + 3 + 1 + 2  # manifest + shards of 5, 2 and 3 samples in twos
    for rel in files:
        assert filecmp.cmp(small_corpus / rel, again / rel, shallow=False), rel
    other = tmp_path / "other"
    write_corpus(other, CorpusConfig(**{**SMALL.__dict__, "seed": 4}), progress=False)
    assert not filecmp.cmp(small_corpus / "train/shard-00000.safetensors", other / "train/shard-00000.safetensors",
                           shallow=False)


def test_test_identities_and_speakers_never_appear_in_train(small_corpus):
    config = CorpusConfig()
    for kind in ("identity", "speaker"):
        pools = {split: set(pool(kind, split, config)) for split in SPLITS}
        assert not pools["test"] & pools["train"] and not pools["val"] & pools["train"]
        assert not pools["test"] & pools["val"]
    # and in generated samples, not only in the pools
    generator = SampleGenerator(CorpusConfig(seed=11))
    seen = {split: [generator.generate(split, i) for i in range(12)] for split in ("train", "test")}
    train_ids = {s.character["identity_id"] for s in seen["train"]}
    train_voices = {s.speaker["speaker_id"] for s in seen["train"]}
    for s in seen["test"]:
        assert s.character["identity_id"] not in train_ids
        assert s.speaker["speaker_id"] not in train_voices
        assert s.character["identity_id"] in pool("identity", "test", config)


def test_shards_round_trip_samples(small_corpus):
    ds = ShardDataset(small_corpus, "test")
    assert len(ds) == 3
    generated = SampleGenerator(SMALL).generate("test", 1)
    loaded = ds[1]
    assert loaded.sample_id == generated.sample_id and loaded.transcript == generated.transcript
    np.testing.assert_array_equal(loaded.frames, generated.frames)
    np.testing.assert_array_equal(loaded.waveform, generated.waveform)
    assert loaded.phonemes == generated.phonemes
    assert loaded.waveform.shape[0] == loaded.num_frames * TB.samples_per_frame
    assert loaded.frames.shape[1:] == (64, 64, 3)


def test_streaming_dataset_matches_shards(small_corpus):
    import torch

    streamed = list(torch.utils.data.DataLoader(StreamingCorpus(SMALL, "val"), batch_size=None, num_workers=2))
    stored = ShardDataset(small_corpus, "val")
    assert sorted(s.sample_id for s in streamed) == [stored[i].sample_id for i in range(len(stored))]


def test_corpus_command_prints_hours_count_and_speed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "streamchar", "corpus", "--out", str(tmp_path / "c"),
                           "--train-samples", "2", "--val-samples", "1", "--test-samples", "1", "-q"],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == list(SPLITS)
    assert "total      4 samples" in lines[3] and " h " in lines[3] and "s of corpus per wall second" in lines[3]


def test_train_and_evaluate_codecs_end_to_end(small_corpus, tmp_path):
    """A few steps of the real training command write a bundle the renderer loads and eval-codecs reads."""
    from streamchar.models.bundle import load_renderer, read_manifest
    from training.codecs import CodecTrainConfig, evaluate_codecs, train_codecs

    out = tmp_path / "bundle"
    train_codecs(small_corpus, out, CodecTrainConfig(steps=20, batch_size=8), progress=False)
    manifest = read_manifest(out)
    assert manifest["trained"]["video_codec"] and manifest["training"]["codecs"]["config"]["steps"] == 20
    renderer = load_renderer(out)  # the renderer picks up the trained codec beside an untrained DiT
    assert not renderer.trained
    assert renderer.video_codec.config.latent_scale != 1.0  # calibrated to unit-variance latents
    result = evaluate_codecs(small_corpus, out, "test")
    assert result["frames"] > 0 and 5 < result["video_psnr_db"] < 60
    # phoneme units are their phoneme: only the silence class mixes "_" with espeak's pause phonemes
    units = load_module(UnitTokenizer, out / "units")
    assert units.config.kind == "phoneme" and result["units_units_used"] <= units.config.num_units + 1
    assert result["units_purity"] > 0.95


def test_phoneme_units_follow_the_transcript(small_corpus, tmp_path):
    """Frame units from the alignment, collapsed, give back the transcript's phonemes (what the LM must
    learn to emit), survive a save/load, and refuse the other kind's entry point."""
    import jiwer

    from streamchar.models.audio_codec import PRESETS, MelAudioCodec
    from streamchar.models.units import UnitTokenizerConfig, is_pause
    from training.eval.recognizer import transcript_phonemes
    from training.units import fit_phoneme_units, sample_units

    ds = ShardDataset(small_corpus, "train")
    samples = [ds[i] for i in range(len(ds))]
    codec = MelAudioCodec(PRESETS["tiny"])
    tokenizer = fit_phoneme_units(samples, codec)
    inventory = tokenizer.config.inventory
    assert inventory == tuple(sorted(inventory)) and not any(is_pause(p) for p in inventory)
    refs, hyps = [], []
    for s in samples:
        units = sample_units(tokenizer, codec, s).tolist()
        assert len(units) == s.num_frames and set(units) <= set(range(tokenizer.silence_unit + 1))
        assert units[-1] == tokenizer.silence_unit  # the clip ends in silence
        runs = [u for j, u in enumerate(units) if u != tokenizer.silence_unit and (j == 0 or u != units[j - 1])]
        refs.append(" ".join(p for p in transcript_phonemes(s) if not is_pause(p)))
        hyps.append(" ".join(inventory[u] for u in runs))
    assert jiwer.wer(refs, hyps) < 0.1  # 3.6 % on the full test split: short phonemes can miss every frame centre
    assert tokenizer.encode_phonemes(["_", "_:", "no-such-phoneme", inventory[2]]).tolist() == [
        tokenizer.silence_unit] * 3 + [2]
    save_module(tokenizer, tokenizer.config, tmp_path / "units")
    loaded = load_module(UnitTokenizer, tmp_path / "units")
    assert loaded.config == tokenizer.config
    assert torch.equal(sample_units(loaded, codec, samples[0]), sample_units(tokenizer, codec, samples[0]))
    with pytest.raises(ValueError, match="phoneme alignment"):
        loaded.encode(torch.zeros(1, 8, 64))
    with pytest.raises(ValueError, match="inventory"):
        UnitTokenizerConfig(num_units=3, kind="phoneme", inventory=("a", "b"))
    with pytest.raises(ValueError, match="non-pause"):
        UnitTokenizerConfig(num_units=2, kind="phoneme", inventory=("a", "_:"))


def test_units_carry_phonetic_information(small_corpus):
    """k-means units beat the always-the-commonest-phoneme baseline (random ids would not)."""
    from streamchar.models.audio_codec import PRESETS, MelAudioCodec
    from training.units import fit_units, unit_purity

    ds = ShardDataset(small_corpus, "train")
    samples = [ds[i] for i in range(len(ds))]
    codec = MelAudioCodec(PRESETS["tiny"])
    tokenizer = fit_units(samples, codec, num_units=24, iterations=20)
    fitted = unit_purity(tokenizer, codec, samples)
    assert fitted["purity"] > fitted["majority_phoneme_baseline"] + 0.1
