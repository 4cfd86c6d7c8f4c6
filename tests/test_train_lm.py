"""Orchestrator-LM training: feasible targets, protocol-exact replay, the loss, and torchrun with resume.

Samples are generated in-process and the torchrun test writes its own tiny corpus, so nothing here
needs data/corpus; the shipped bundle's audio codec and unit tokenizer give the units.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamchar.engine.protocol import OrchestratorProtocol, ProtocolConfig
from streamchar.models.bundle import default_checkpoint, load_orchestrator
from streamchar.models.orchestrator_lm import OrchestratorLM
from streamchar.models.vocab import StreamCharVocab
from streamchar.timebase import TimeBase
from training.data.corpus import CorpusConfig, SampleGenerator, write_corpus
from training.objectives.lm import LMObjectiveConfig, allowed_mask, lm_loss
from training.pipelines.lm_data import (
    FrameTargets,
    InfeasibleTarget,
    SequenceSet,
    _allowed_span,
    feasible_advances,
    frame_targets,
    load_unit_codecs,
    replay,
    speech_pointer,
    words_of,
)
from training.trainers.lm import LMModelConfig, main

ROOT = Path(__file__).resolve().parent.parent
VOCAB = LMModelConfig().vocab()  # as many units as the shipped unit tokenizer
# Small context and lookahead so that the replays slide and insert text many times.
SMALL = ProtocolConfig(lookahead_bytes=4, max_context=112, keep_frames=8, keep_text_behind=4, max_stall_frames=12)
TINY_LM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 1}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small ops on a shared machine run fastest on one thread (idle OpenMP workers spin otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def codecs():
    return load_unit_codecs(default_checkpoint("tiny"))


@pytest.fixture(scope="module")
def samples():
    generator = SampleGenerator(CorpusConfig())
    return [generator.generate("train", i) for i in range(3)]


def check_feasible(targets: FrameTargets, num_bytes: int, protocol: OrchestratorProtocol) -> None:
    advances = targets.advances.tolist()
    pointer = np.cumsum(advances)
    assert all(0 <= a <= protocol.vocab.max_advance for a in advances)
    assert pointer[-1] == num_bytes
    stall = 0
    for a, p in zip(advances, pointer):
        if p - a == num_bytes:
            break  # <eos> came before this frame
        stall = 0 if a else stall + 1
        assert stall <= protocol.config.max_stall_frames


@pytest.mark.parametrize("max_advance,max_stall", [(8, 12), (1, 2)])
def test_frame_targets_are_feasible_and_monotonic(samples, codecs, max_advance, max_stall):
    vocab = StreamCharVocab(num_units=VOCAB.num_units, max_advance=max_advance)
    protocol = OrchestratorProtocol(vocab, 8, ProtocolConfig(max_stall_frames=max_stall))
    for sample in samples:
        text = sample.transcript.encode("utf-8")
        raw = speech_pointer(sample, sample.num_frames)
        assert raw == sorted(raw) and raw[-1] == len(text) and len(raw) == sample.num_frames
        targets = frame_targets(sample, codecs.tokenizer, codecs.codec, protocol)
        assert len(targets.units) >= sample.num_frames
        assert int(targets.units.min()) >= 0 and int(targets.units.max()) <= vocab.num_units
        check_feasible(targets, len(text), protocol)
        # digital silence (the zero padding after the speech) is the silence class
        silent = np.abs(sample.waveform.reshape(sample.num_frames, -1)).max(axis=1) == 0
        assert (targets.units[:sample.num_frames][torch.from_numpy(silent)] == vocab.num_units).all()


def test_onset_pointer_moves_only_where_a_word_starts(samples):
    """Onset mode: the pointer changes only in frames where a phoneme begins (or at the speech's end),
    never lags the spread pointer, and both end at the transcript's length."""
    fps = TimeBase().fps
    for sample in samples:
        onset = speech_pointer(sample, sample.num_frames, mode="onset")
        spread = speech_pointer(sample, sample.num_frames, mode="spread")
        size = len(sample.transcript.encode("utf-8"))
        assert onset[-1] == spread[-1] == size and all(o >= p for o, p in zip(onset, spread))
        speech_end = max(p.end for p in sample.phonemes)
        starts = {int(p.start * fps) for p in sample.phonemes}
        moves = [f for f in range(1, len(onset)) if onset[f] != onset[f - 1]]
        assert all(f in starts or (f + 1) / fps >= speech_end for f in moves)
        assert len(moves) < len([f for f in range(1, len(spread)) if spread[f] != spread[f - 1]])
    with pytest.raises(ValueError, match="pointer mode"):
        speech_pointer(samples[0], 10, mode="sideways")


def test_feasible_advances_carry_stall_and_end_at_words():
    protocol = OrchestratorProtocol(StreamCharVocab(num_units=4, max_advance=3), 8,
                                    ProtocolConfig(lookahead_bytes=4, max_stall_frames=2, max_context=1024))
    # a jump of 10 bytes into one long word is cut at the reach, 3 + 3 + 3 + 1, past the last target frame
    assert feasible_advances([0, 10, 10], b"abcdefghij", protocol) == [0, 3, 3, 3, 1]
    # a jump over two words stops at the first word's end, not at the reach inside the second word
    assert feasible_advances([0, 5, 5], b"ab cd", protocol) == [0, 2, 3]
    # three frames without text moving: the third must advance, a whole word; the pointer runs ahead
    assert feasible_advances([0, 0, 0, 0, 2, 2], b"ab", protocol) == [0, 0, 2, 0, 0, 0]
    # the bytes in context bound an advance: lookahead 1 gives 2 bytes per insertion
    tight = OrchestratorProtocol(StreamCharVocab(num_units=4, max_advance=3), 8,
                                 ProtocolConfig(lookahead_bytes=1, max_context=1024))
    assert feasible_advances([3, 3], b"abc", tight) == [2, 1]


@pytest.mark.parametrize("streamed", [False, True])
def test_oracle_replay_reproduces_the_targets(samples, codecs, streamed):
    protocol = OrchestratorProtocol(VOCAB, 8, SMALL)
    slides = 0
    for sample in samples:
        text = sample.transcript.encode("utf-8")
        targets = frame_targets(sample, codecs.tokenizer, codecs.codec, protocol)
        pieces = [w.encode("utf-8") for w in words_of(sample.transcript)] if streamed else None
        sequences = replay(protocol, text, targets, pieces)
        slides += len(sequences) - 1
        advances, units = [], []
        for seq in sequences:
            assert seq.input_ids[:2] == ([VOCAB.bos_id, VOCAB.text_id]) and len(seq.input_ids) <= SMALL.max_context
            for i, token in enumerate(seq.input_ids):
                if not seq.loss_mask[i]:
                    continue
                in_span = seq.allowed_lo[i] <= token <= seq.allowed_hi[i]
                assert (in_span and not seq.allowed_gaps[i] >> (token - seq.allowed_lo[i]) & 1) or (
                    seq.allow_wait[i] and token == VOCAB.wait_id)
                if VOCAB.is_adv(token):
                    advances.append(VOCAB.advance_of(token))
                else:
                    units.append(VOCAB.num_units if token == VOCAB.wait_id else VOCAB.unit_of(token))
        assert sum(advances) == len(text)  # the pointer ends at the transcript's end
        assert advances == targets.advances.tolist()[:len(advances)]
        assert units == targets.units.tolist()[:len(units)] and len(units) == len(advances)
    assert slides >= 2  # the contexts slid, and the sequences still cover every frame once


def test_replay_rejects_infeasible_targets(samples, codecs):
    protocol = OrchestratorProtocol(VOCAB, 8, SMALL)
    sample = samples[0]
    text = sample.transcript.encode("utf-8")
    good = frame_targets(sample, codecs.tokenizer, codecs.codec, protocol)
    too_fast = good.advances.clone()
    too_fast[0] += VOCAB.max_advance
    too_fast[too_fast.nonzero()[-1]] -= VOCAB.max_advance
    stalled = good.advances.clone()
    stalled[14] += stalled[:14].sum()
    stalled[:14] = 0  # 14 frames without an advance: the protocol forces one after 12
    for advances in (too_fast, stalled):
        with pytest.raises(InfeasibleTarget):
            replay(protocol, text, FrameTargets(good.units, advances))


def test_allowed_sets_with_gaps_round_trip_into_the_loss_mask():
    """Word-end advances are not a range of ids: the missing ones travel as a bitmask and stay masked."""
    assert _allowed_span((262, 264, 267, 261), 261) == (262, 267, 0b11010, 1)
    assert _allowed_span((300, 301, 302), 261) == (300, 302, 0, 0)
    lo, hi = torch.tensor([10, 10]), torch.tensor([13, 13])
    mask = allowed_mask(lo, hi, torch.tensor([0, 0b0110]), torch.tensor([False, True]), 20, 5)
    assert mask[0].nonzero().flatten().tolist() == [10, 11, 12, 13]
    assert mask[1].nonzero().flatten().tolist() == [5, 10, 13]


def test_loss_falls_when_overfitting_two_samples(samples, codecs):
    protocol = OrchestratorProtocol(VOCAB, 8, ProtocolConfig())
    sequences = [seq for s in samples[:2] for seq in
                 replay(protocol, s.transcript.encode("utf-8"),
                        frame_targets(s, codecs.tokenizer, codecs.codec, protocol))]
    data = SequenceSet.from_sequences(sequences, {})
    batch = data.batch(list(range(len(data))), VOCAB.pad_id)
    model_config = LMModelConfig(**TINY_LM)
    model = OrchestratorLM(model_config.build(model_config.vocab())).init_weights(0)
    with torch.no_grad():  # restricting the softmax to the allowed ids can only lower the loss
        full, _ = lm_loss(model, batch, VOCAB, LMObjectiveConfig(constrained=False))
        first, first_metrics = lm_loss(model, batch, VOCAB)
    assert float(first) < float(full)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss, metrics = lm_loss(model, batch, VOCAB)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.5 * float(first)
    assert metrics["adv_acc"] > first_metrics["adv_acc"] and metrics["unit_acc"] > first_metrics["unit_acc"]


def test_torchrun_two_ranks_resume_export_and_eval(tmp_path, capsys, torchrun):
    corpus, out = tmp_path / "corpus", tmp_path / "run"
    write_corpus(corpus, CorpusConfig(train_samples=6, val_samples=0, test_samples=2, samples_per_shard=6),
                 progress=False)
    overrides = [f"run.out={out}", "run.batch_size=2", "run.log_every=1", "run.warmup_steps=1",
                 "run.threads=1", f"data.corpus={corpus}",
                 "data.extra_corpora=",  # no speech-only corpus here
                 f"data.cache={tmp_path / 'cache'}", *(f"model.{k}={v}" for k, v in TINY_LM.items())]

    def train(steps: int) -> str:
        return torchrun("training.trainers.lm", ROOT / "training/configs/lm_tiny.toml", [*overrides, f"run.steps={steps}"])

    train(3)
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["step"] == 3 and len(ranks["digests"]) == 2 and len(set(ranks["digests"])) == 1
    assert (out / "checkpoints" / "step-0000003" / "state.pt").exists()
    assert (out / "export" / "orchestrator" / "model.safetensors").exists()

    log = train(5)
    assert "resumed from" in log and "at step 3" in log
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["step"] == 5 and len(set(ranks["digests"])) == 1
    model, vocab, trained = load_orchestrator(out / "export")
    assert trained and vocab.num_units == VOCAB.num_units and model.config.hidden_size == TINY_LM["hidden_size"]

    metrics = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out), "--corpus", str(corpus), "--split", "test", "--limit", "1",
                 "--json", str(metrics)]) == 0
    assert "pointer monotonic" in capsys.readouterr().out
    result = json.loads(metrics.read_text())
    assert result["samples"] == 1 and result["pointer_ok"] == 1.0  # guaranteed by constrained decoding
    assert 0.0 <= result["unit_acc"] <= 1.0 and result["pointer_err_chars"] >= 0.0
    assert result["unit_sequence_err"] > 0.5  # five training steps do not learn to spell


def test_unit_runs_drop_timing_and_silence():
    from training.trainers.lm import unit_runs

    assert unit_runs([9, 3, 3, 3, 9, 3, 4, 4, 9, 9], silence=9) == ["3", "3", "4"]
    assert unit_runs([9, 9], silence=9) == []


def test_warm_start_copies_what_fits_when_the_unit_inventory_changes(tmp_path):
    """A new run initialised from a run with more units: the transformer whole, the token table by id
    (text, control and advance ids precede the units, so they keep their meaning)."""
    from training.trainers.runtime import warm_start

    big, small = StreamCharVocab(num_units=12, max_advance=8), StreamCharVocab(num_units=5, max_advance=8)
    source = OrchestratorLM(LMModelConfig(**TINY_LM).build(big)).init_weights(1)
    (tmp_path / "step-0000007").mkdir()
    torch.save({"model": source.state_dict()}, tmp_path / "step-0000007" / "state.pt")
    target = OrchestratorLM(LMModelConfig(**TINY_LM).build(small)).init_weights(2)
    report = warm_start(target, tmp_path / "step-0000007")
    assert report["leading_rows"] == ["model.embed_tokens.weight"] and not report["fresh"]
    assert len(report["copied"]) == len(target.state_dict()) - 1
    assert torch.equal(target.model.embed_tokens.weight, source.model.embed_tokens.weight[:small.vocab_size])
    assert torch.equal(target.state_dict()["model.layers.1.mlp.gate_proj.weight"],
                       source.state_dict()["model.layers.1.mlp.gate_proj.weight"])
    with pytest.raises(FileNotFoundError, match="neither a training checkpoint"):
        warm_start(target, tmp_path / "nowhere")


def test_speech_only_corpus_extends_the_lm_data(samples, codecs, tmp_path):
    """A speech-only sample is the rendered sample without its frames, so it gives the LM the very same
    sequences; its caches concatenate after the corpus's, and the DiT refuses such a corpus."""
    from training.pipelines.dit_data import precompute
    from training.pipelines.lm_data import CacheSpec, ensure_cache, sample_sequences

    speech = SampleGenerator(CorpusConfig(speech_only=True)).generate("train", 1)
    full = samples[1]
    assert speech.frames.shape == (full.num_frames, 0, 0, 3) and speech.transcript == full.transcript
    np.testing.assert_array_equal(speech.waveform, full.waveform)
    protocol = OrchestratorProtocol(VOCAB, TimeBase().frames_per_chunk, SMALL)
    spec = CacheSpec(tmp_path, "train", protocol, codecs, True, 1e-3)
    assert [s.input_ids for s in sample_sequences(speech, spec)] == [s.input_ids for s in sample_sequences(full, spec)]

    sets = []
    for name, config in (("rendered", CorpusConfig(seed=5, train_samples=2, val_samples=0, test_samples=0)),
                         ("speech", CorpusConfig(seed=6, train_samples=3, val_samples=0, test_samples=0,
                                                 speech_only=True))):
        write_corpus(tmp_path / name, config, progress=False)
        corpus_spec = CacheSpec(tmp_path / name, "train", protocol, codecs, False, 1e-3)
        sets.append(SequenceSet.load(ensure_cache(corpus_spec, tmp_path / "cache", progress=False)))
    both = SequenceSet.concat(sets)
    assert len(both) == len(sets[0]) + len(sets[1]) and len(sets[1]) >= 3
    assert torch.equal(both.batch([len(sets[0])], 0).input_ids, sets[1].batch([0], 0).input_ids)
    assert torch.equal(both.batch([len(sets[0]) - 1], 0).input_ids, sets[0].batch([len(sets[0]) - 1], 0).input_ids)
    with pytest.raises(ValueError, match="speech-only"):
        precompute(tmp_path / "speech", tmp_path / "dit-cache", "train", None, progress=False)


def test_long_samples_slide_the_serving_context(codecs):
    """A sample of several utterances starts with the one-utterance corpus's transcript, spoken as one
    text; replayed through the serving protocol (max_context 1024) it rebuilds the context by slide
    after slide, as a long session does, where this utterance alone fits in one context."""
    from training.pipelines.lm_data import CacheSpec, sample_sequences

    one = SampleGenerator(CorpusConfig(speech_only=True)).generate("train", 3)
    long = SampleGenerator(CorpusConfig(speech_only=True, utterances=6)).generate("train", 3)
    assert long.transcript.startswith(one.transcript + " ") and long.num_frames > 3 * one.num_frames
    assert max(p.char_end for p in long.phonemes) > len(long.transcript) - 3  # aligned to its very end
    protocol = OrchestratorProtocol(VOCAB, TimeBase().frames_per_chunk, ProtocolConfig())
    spec = CacheSpec(Path("unused"), "train", protocol, codecs, False, 1e-3)
    short, slid = sample_sequences(one, spec), sample_sequences(long, spec)
    assert len(short) == 1 and len(slid) >= 3
    assert max(len(s.input_ids) for s in slid) > 900  # positions up to max_context are trained on
    with pytest.raises(ValueError, match="utterances"):
        CorpusConfig(utterances=0)


def test_samples_are_replayed_with_their_voices_accent(samples, codecs):
    """With accents in the vocabulary every context of a sample carries its voice's accent after <bos>, whole
    text and streamed, slides included; a fixed share of the samples (by id) names none; the cache key
    follows both."""
    import dataclasses

    from training.data.speech import VOICES
    from training.pipelines.lm_data import CacheSpec, sample_accent, sample_sequences

    vocab = LMModelConfig(accents=tuple(VOICES)).vocab()
    assert vocab.unit_ids() == VOCAB.unit_ids()  # the accents only add ids after the units
    protocol = OrchestratorProtocol(vocab, 8, SMALL)
    spec = CacheSpec(Path("unused"), "train", protocol, codecs, True, 1e-3, accent_dropout=0.0)
    plain = CacheSpec(Path("unused"), "train", OrchestratorProtocol(VOCAB, 8, SMALL), codecs, True, 1e-3)
    for sample in samples:
        accent = vocab.accent_id(sample.speaker["voice"])
        with_accent, without = sample_sequences(sample, spec), sample_sequences(sample, plain)
        assert len(with_accent) >= 2 and {tuple(s.input_ids[:2]) for s in with_accent} == {(vocab.bos_id, accent)}
        # the same decisions to learn, one token later
        assert [s.input_ids[2:] for s in with_accent][:1] == [s.input_ids[1:] for s in without][:1]
        assert sum(map(sum, (s.loss_mask for s in with_accent))) == sum(map(sum, (s.loss_mask for s in without)))
    many = [dataclasses.replace(samples[0], sample_id=f"train-{i:06d}") for i in range(400)]
    dropped = [sample_accent(s, vocab, 0.25) == "" for s in many]
    assert 0.18 < np.mean(dropped) < 0.32
    assert dropped == [sample_accent(s, vocab, 0.25) == "" for s in many]  # fixed by the ids
    assert sample_accent(samples[0], VOCAB, 0.0) == ""  # no accents in the vocabulary: none named
    with pytest.raises(ValueError, match="unknown accent 'en-au'"):
        sample_accent(dataclasses.replace(samples[0], speaker={"voice": "en-au"}), vocab, 0.0)
    keys = {spec.key(), dataclasses.replace(spec, accent_dropout=0.5).key()}
    assert len(keys) == 2 and plain.key() not in keys
