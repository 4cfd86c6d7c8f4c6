"""The CTC phoneme recognizer: shapes, greedy decoding, PER via jiwer, a tiny training run, checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from streamchar.models.io import CheckpointError, load_module, save_module
from training.data.corpus import CorpusConfig, SampleGenerator
from training.data.schema import PhonemeEvent, Sample
from training.eval.recognizer import (
    BLANK,
    PhonemeRecognizer,
    PhonemeRecognizerConfig,
    build_inventory,
    evaluate_recognizer,
    features,
    greedy_decode,
    load_recognizer,
    phoneme_error_rate,
    pooled_per,
    reference_phonemes,
    train_recognizer,
    transcript_phonemes,
)

INVENTORY = ("a", "b", "c", "@", "oU")
TINY = dict(conv_channels=96, hidden=96, layers=1, dropout=0.0)


def _crop(sample: Sample, seconds: float) -> Sample:
    """The sample's first whole phonemes up to `seconds` (short utterances keep the test fast)."""
    events = [e for e in sample.phonemes if e.end <= seconds] or sample.phonemes[:1]
    end = int(events[-1].end * 16000)
    return dataclasses.replace(sample, phonemes=events, waveform=sample.waveform[:end])


@pytest.fixture(scope="module")
def train_samples() -> list[Sample]:
    generator = SampleGenerator(CorpusConfig(image_size=16))
    return [_crop(generator.generate("train", i), 2.0) for i in range(24)]


@pytest.fixture(scope="module")
def tiny_model(train_samples) -> PhonemeRecognizer:
    return train_recognizer(train_samples, steps=150, batch_size=8, lr=5e-3, spec_augment=False, seed=0,
                            log_every=0, **TINY)


def test_config_rejects_pauses_and_duplicates():
    with pytest.raises(ValueError):
        PhonemeRecognizerConfig(inventory=("a", "_:"))
    with pytest.raises(ValueError):
        PhonemeRecognizerConfig(inventory=("a", "a"))


def test_shapes_and_lengths():
    config = PhonemeRecognizerConfig(inventory=INVENTORY, conv_channels=32, hidden=24, layers=2)
    model = PhonemeRecognizer(config).eval()
    x = torch.randn(3, 101, 64)
    lengths = torch.tensor([101, 60, 7])
    log_probs, out_lengths = model(x, lengths)
    assert log_probs.shape == (3, 34, len(INVENTORY) + 1)  # ceil(101 / 3) frames, blank + inventory
    assert out_lengths.tolist() == [34, 20, 3]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, 34), atol=1e-5)
    # A padded row gives the same outputs as the row alone (packed GRU: padding never leaks in).
    alone, _ = model(x[1:2, :60], lengths[1:2])
    assert torch.allclose(alone[0], log_probs[1, :20], atol=1e-5)

    feats = features(np.zeros(16000 + 37, dtype=np.float32) + 0.01 * np.random.default_rng(0).standard_normal(16037))
    assert feats.shape == (101, 64) and torch.isfinite(feats).all()


def test_greedy_decode_collapses_repeats_and_blanks():
    # frames: a a _ a b b _ _ c c  -> a a b c (the blank separates the repeated a)
    path = [1, 1, BLANK, 1, 2, 2, BLANK, BLANK, 3, 3]
    logits = torch.full((len(path), 4), -10.0)
    logits[torch.arange(len(path)), torch.tensor(path)] = 0.0
    assert greedy_decode(logits.log_softmax(-1)) == [[1, 1, 2, 3]]
    batch = torch.stack([logits, logits.flip(0)]).log_softmax(-1)
    assert greedy_decode(batch, torch.tensor([4, 10])) == [[1, 1], [3, 2, 1, 1]]
    model = PhonemeRecognizer(PhonemeRecognizerConfig(inventory=INVENTORY))
    assert model.decode_tokens([1, 1, 2, 3]) == ["a", "a", "b", "c"]
    assert model.encode_phonemes(["a", "_:", "oU", "zz", "_"]) == [1, 5]


def test_transcript_phonemes_drop_pauses_andpooled_per():
    sample = Sample("x", "train", "hi", [PhonemeEvent("_:", 0, .1, 0, 0), PhonemeEvent("h", .1, .2, 0, 2),
                                         PhonemeEvent("aI", .2, .3, 0, 2), PhonemeEvent("_", .3, .4, 2, 2)],
                    np.zeros(6400, np.float32), np.zeros((1, 4, 4, 3), np.uint8))
    assert transcript_phonemes(sample) == ["h", "aI"]
    assert pooled_per([["a", "b", "c"]], [["a", "c"]]) == pytest.approx(1 / 3)
    assert pooled_per([["a", "b"]], [[]]) == 1.0
    assert pooled_per([["a", "b"], ["c", "d"]], [["a", "b"], ["x", "d"]]) == pytest.approx(0.25)


def test_reference_phonemes_match_corpus_labels(train_samples):
    generator = SampleGenerator(CorpusConfig(image_size=16))
    sample = generator.generate("test", 0)
    assert reference_phonemes(sample.transcript, sample.speaker) == transcript_phonemes(sample)
    assert build_inventory([sample]) == tuple(sorted(set(transcript_phonemes(sample))))


def test_tiny_training_beats_mismatched_transcripts(tiny_model, train_samples):
    result = evaluate_recognizer(tiny_model, train_samples)
    assert result["per"] < 0.6, result
    assert result["per_mismatched"] > 0.85, result
    assert result["per_mismatched"] - result["per"] > 0.3, result
    s, other = train_samples[0], train_samples[1]
    own = phoneme_error_rate(tiny_model, s.waveform, transcript_phonemes(s))
    # Pauses in a reference are ignored.
    assert phoneme_error_rate(tiny_model, s.waveform, [e.phoneme for e in s.phonemes]) == own
    assert own < phoneme_error_rate(tiny_model, s.waveform, transcript_phonemes(other))


def test_save_load_round_trip(tiny_model, train_samples, tmp_path):
    save_module(tiny_model, tiny_model.config, tmp_path / "rec")
    loaded = load_recognizer(tmp_path / "rec")
    assert loaded.config == tiny_model.config and isinstance(loaded.config.inventory, tuple)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    wave = train_samples[2].waveform
    assert loaded.recognize(wave) == tiny_model.recognize(wave)
    x = features(wave)[None]
    assert torch.equal(loaded(x)[0], tiny_model(x)[0])

    class Other(PhonemeRecognizer):  # a checkpoint is only loaded into the class that saved it
        pass

    with pytest.raises(CheckpointError):
        load_module(Other, tmp_path / "rec")
