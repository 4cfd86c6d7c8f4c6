"""The evaluation harness: protocols, system specs, and `streamchar evaluate` end to end on a tiny corpus.

The end-to-end test runs the real command: the ground truth and the shipped pipeline (three services
+ Redis as local processes), short clips and one long stream, and checks the report's numbers
against what must hold whatever the models are (the ground truth syncs at offset 0, matches its
reference identity, its seams are invisible, its Fréchet distance is the split-half floor) and the files.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from training.data.corpus import CorpusConfig, write_corpus
from training.eval.protocols import long_stream_items, short_clip_items
from training.eval.systems import CodecRoundTripSystem, GroundTruthSystem, PipelineSystem, parse_system

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None and shutil.which("espeak") is None,
                                reason="espeak-ng generates the ground truth")

SMALL = CorpusConfig(train_samples=0, val_samples=0, test_samples=12, samples_per_shard=6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, SMALL, progress=False)
    return root


def test_parse_system_specs():
    assert isinstance(parse_system("ground-truth"), GroundTruthSystem)
    p = parse_system("pipeline,label=teacher,checkpoint=ckpt/t,steps=32")
    assert isinstance(p, PipelineSystem)
    assert p.label == "teacher" and p.options == {"checkpoint": "ckpt/t", "steps": "32"}
    assert p.spec == "pipeline,checkpoint=ckpt/t,steps=32"
    # the voice is a session option, not a service setting: voice=item is each item's own
    v = parse_system("pipeline,voice=item,steps=4")
    assert v.options == {"steps": "4"} and v.spec == "pipeline,voice=item,steps=4"
    item = type("Item", (), {"speaker": {"voice": "en-gb-scotland"}})()
    assert v.voice_of(item) == "en-gb-scotland" and parse_system("pipeline,voice=en-us").voice_of(item) == "en-us"
    assert parse_system("pipeline").voice_of(item) == ""
    c = parse_system("codecs,checkpoint=ckpt/t")
    assert isinstance(c, CodecRoundTripSystem) and c.label == "codecs" and c.checkpoint == "ckpt/t"
    assert parse_system("codecs").spec == "codecs"
    for bad in ("nonsense", "pipeline,steps", "ground-truth,steps=2", "", "codecs,steps=2", "codecs,checkpoint"):
        with pytest.raises(ValueError):
            parse_system(bad)


def test_short_clips_are_test_utterances_of_3_to_10_seconds(corpus):
    items = short_clip_items(corpus)
    assert items, "the small corpus should hold some 3-10 s test clips"
    for it in items:
        assert 3.0 <= it.seconds <= 10.0
        assert it.item_id.startswith("test-")
        assert len(it.waveform) == len(it.frames) * 640
        assert it.reference.shape == it.frames.shape[1:]
        # The reference is the identity's neutral render: close to its frames, not one of them.
        assert np.abs(it.reference.astype(float) - it.frames[0]).mean() < 20
    assert len(short_clip_items(corpus, limit=1)) == 1
    # another split (val, to choose settings on) is read from its own shards: this corpus has none
    with pytest.raises(FileNotFoundError, match="no val shards"):
        short_clip_items(corpus, split="val")


def test_the_codec_round_trip_keeps_the_clip_and_its_sync(corpus):
    from training.eval.sync import load_sync, sync_scores

    item = short_clip_items(corpus, limit=1)[0]
    out = CodecRoundTripSystem().run(item)
    assert out.frames.shape == item.frames.shape and out.frames.dtype == np.uint8
    assert out.waveform.shape == item.waveform.shape and out.waveform.dtype == np.float32
    mse = np.mean((out.frames.astype(float) - item.frames) ** 2)
    assert 0 < mse and 10 * np.log10(255 ** 2 / mse) > 25, "the tiny video codec's PSNR is ~31 dB"
    assert not np.array_equal(out.waveform, item.waveform)
    envelope = [np.sqrt((w.reshape(-1, 640) ** 2).mean(1)) for w in (out.waveform, item.waveform)]
    assert np.corrcoef(*envelope)[0, 1] > 0.8, "Griffin-Lim keeps the loudness contour"
    assert sync_scores(load_sync(), out.frames, out.waveform).offset == 0


def test_long_streams_last_at_least_the_target_and_stream_word_by_word():
    items = long_stream_items(sessions=2, minutes=0.25, words_per_second=20.0, config=SMALL)
    assert len(items) == 2
    for it in items:
        assert it.seconds >= 15.0
        assert it.seconds < 15.0 + 20.0, "cut after the utterance that crosses the target"
        assert len(it.waveform) == len(it.frames) * 640
        assert "".join(it.text_deltas()) == it.text
        assert max(e.char_end for e in it.phonemes) <= len(it.text)
    assert items[0].text != items[1].text
    again = long_stream_items(sessions=1, minutes=0.25, config=SMALL)[0]
    assert again.text == items[0].text and np.array_equal(again.frames, items[0].frames)


@pytest.mark.timeout(600)
def test_evaluate_command_end_to_end(corpus, tmp_path):
    from streamchar.cli import main

    out = tmp_path / "report"
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--corpus", str(corpus), "--out", str(out), "--system", "ground-truth",
              "--system", "pipeline,label=shipped", "--short-limit", "4", "--long-sessions", "1",
              "--long-minutes", "0.4", "--window-seconds", "8", "--concurrency", "2", "-q"])
    assert done.value.code == 0
    report = (out / "report.md").read_text()
    assert "streamchar evaluate" in report and "| ground-truth |" in report and "| shipped |" in report
    assert (out / "short.png").stat().st_size > 1000 and (out / "long.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    gt, shipped = results["systems"]
    assert gt["label"] == "ground-truth" and shipped["label"] == "shipped"
    s = gt["short"]
    assert s["clips"] == 4 and s["offset0"] >= 0.75
    assert abs(s["seam"]["ratio"] - 1.0) < 0.15
    assert s["render_ms"] is None and shipped["short"]["render_ms"] > 0
    # The ground truth's FD is its split-half floor: each half of the clips against the other half's frames.
    from training.eval.stability import frechet_distance
    from training.eval.visual import frechet_features, load_visual

    visual = load_visual()
    feats = [frechet_features(visual, it.frames) for it in short_clip_items(corpus, limit=4)]
    a, b = np.concatenate(feats[0::2]), np.concatenate(feats[1::2])
    assert s["fd"] == pytest.approx(0.5 * (frechet_distance(a, b) + frechet_distance(b, a)), rel=1e-6)
    assert shipped["short"]["fd"] > 0 and s["fd"] > 0
    assert s["identity"] > 0.95 and -1.0 <= shipped["short"]["identity"] <= 1.0
    long = gt["long"]["sessions"][0]
    assert long["seconds"] >= 24 and len(long["windows"]["identity"]) >= 3
    assert long["per"] < 0.3
    assert np.isfinite(gt["long"]["drift"]["identity"])
