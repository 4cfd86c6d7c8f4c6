"""The corpus's speech side: espeak-ng synthesis, transcripts, visemes and the mouth track.

All real: libespeak-ng through ctypes (in its helper process), real waveforms, real phoneme timings.
"""

from __future__ import annotations

import ctypes.util
import logging
import re

import numpy as np
import pytest

from training.data.speech import (
    FEMALE_VARIANTS,
    MALE_VARIANTS,
    NEUTRAL_VARIANTS,
    SAMPLE_RATE,
    EspeakCrash,
    EspeakSynthesizer,
    SpeakerParams,
    is_pause,
)
from training.data.transcripts import transcript_from_seed
from training.data.visemes import PHONEME_VISEMES, VISEMES, mouth_track, phoneme_visemes

log = logging.getLogger(__name__)

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("espeak-ng") is None, reason="libespeak-ng is not installed (apt-get install espeak-ng)"
)

SAMPLES_PER_FRAME = 640
SPEAKER = SpeakerParams("test", voice="en-us", variant="m3", pitch=50, pitch_range=50, rate=175, volume=100)


@pytest.fixture(scope="module")
def synth():
    with EspeakSynthesizer() as s:
        yield s


@pytest.fixture(scope="module")
def corpus(synth):
    """20 (transcript, speaker, waveform, events) drawn from seeds, as the generator will."""
    out = []
    for i in range(20):
        text = transcript_from_seed(1000 + i)
        speaker = SpeakerParams.from_seed(f"spk{i}", 2000 + i)
        wave, events = synth.synthesize(text, speaker)
        out.append((text, speaker, wave, events))
    return out


def spoken_spans(text, events):
    return [text[e.char_start:e.char_end] for e in events if not is_pause(e.phoneme)]


def f0_hz(wave: np.ndarray) -> float:
    """Median fundamental over loud 40 ms windows, from the autocorrelation peak in 60..400 Hz."""
    win = 640
    frames = wave[: len(wave) // win * win].reshape(-1, win).astype(np.float64)
    rms = np.sqrt((frames**2).mean(1))
    estimates = []
    for frame in frames[rms > 0.3 * rms.max()]:
        frame = frame - frame.mean()
        ac = np.correlate(frame, frame, "full")[win - 1:]
        lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
        estimates.append(SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(estimates))


def check_events(text, wave, events):
    assert events[0].start == 0.0
    assert events[-1].end == len(wave) / SAMPLE_RATE
    for a, b in zip(events, events[1:]):
        assert a.end == b.start, (a, b)
    for e in events:
        assert e.end > e.start
        assert 0 <= e.char_start <= e.char_end <= len(text), e
    starts = [e.char_start for e in events]
    ends = [e.char_end for e in events]
    assert starts == sorted(starts) and ends == sorted(ends)


# -- synthesis ------------------------------------------------------------------------------------


def test_waveform_and_events_are_well_formed(synth):
    text = "Hello there! How are you today, Maya?"
    wave, events = synth.synthesize(text, SPEAKER)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 1.0 < len(wave) / SAMPLE_RATE < 5.0
    assert float(np.abs(wave).max()) <= 1.0
    assert float(np.sqrt(np.mean(wave**2))) > 0.01
    check_events(text, wave, events)
    assert any(is_pause(e.phoneme) for e in events)
    assert {"Hello", "there", "How", "are", "you", "today", "Maya"} <= set(spoken_spans(text, events))


def test_deterministic_whatever_ran_before(synth):
    text = "The quick brown fox jumps over the lazy dog."
    first = synth.synthesize(text, SPEAKER)
    synth.synthesize("Something else entirely, in another voice.", SpeakerParams("other", "en-gb", "f2", pitch=70))
    again = synth.synthesize(text, SPEAKER)
    assert np.array_equal(first[0], again[0])
    assert first[1] == again[1]
    with EspeakSynthesizer() as fresh:  # and across helper processes
        other = fresh.synthesize(text, SPEAKER)
    assert np.array_equal(first[0], other[0]) and first[1] == other[1]


def test_speakers_change_the_audio(synth):
    text = "Many mornings we walked along the river and watched the boats."
    low, _ = synth.synthesize(text, SpeakerParams("a", "en-us", "m3", pitch=15))
    high, _ = synth.synthesize(text, SpeakerParams("a", "en-us", "m3", pitch=85))
    f_low, f_high = f0_hz(low), f0_hz(high)
    assert f_high > 1.3 * f_low, (f_low, f_high)

    slow, _ = synth.synthesize(text, SpeakerParams("a", "en-us", "m3", rate=130))
    fast, _ = synth.synthesize(text, SpeakerParams("a", "en-us", "m3", rate=210))
    assert len(slow) > 1.3 * len(fast), (len(slow), len(fast))

    female, _ = synth.synthesize(text, SpeakerParams("a", "en-us", "f2"))
    assert f0_hz(female) > 1.3 * f0_hz(low)


def test_char_offsets_non_ascii(synth):
    text = "Zoë's café is open."
    wave, events = synth.synthesize(text, SPEAKER)
    check_events(text, wave, events)
    spans = spoken_spans(text, events)
    assert spans[0] == "Zoë's" and "café" in spans and spans[-1] == "open"
    cafe = [e.phoneme for e in events if text[e.char_start:e.char_end] == "café"]
    assert cafe[0] == "k" and len(cafe) >= 3


def test_char_offsets_numbers(synth):
    text = "It costs 42 dollars, in 1999."
    wave, events = synth.synthesize(text, SPEAKER)
    check_events(text, wave, events)
    forty_two = [e for e in events if text[e.char_start:e.char_end] == "42"]
    year = [e for e in events if text[e.char_start:e.char_end] == "1999"]
    # "forty two" and "nineteen ninety nine" each expand to many phonemes, all on the digits.
    assert len(forty_two) >= 5 and forty_two[0].phoneme == "f" and forty_two[-1].phoneme == "u:"
    assert len(year) >= 12
    dollars = [e for e in events if text[e.char_start:e.char_end] == "dollars"]
    assert dollars and dollars[0].start >= forty_two[-1].end
    # The pause at the comma covers the characters between the words.
    assert any(is_pause(e.phoneme) and text[e.char_start:e.char_end] == ", " for e in events)


def test_every_word_is_covered(corpus):
    for text, _, wave, events in corpus:
        check_events(text, wave, events)
        covered = np.zeros(len(text), dtype=bool)
        for e in events:
            if not is_pause(e.phoneme):
                covered[e.char_start:e.char_end] = True
        for m in re.finditer(r"\w+", text):
            assert covered[m.start():m.end()].all(), (m.group(), text)


def test_bad_requests(synth):
    with pytest.raises(ValueError):
        synth.synthesize("   ", SPEAKER)
    with pytest.raises(ValueError):
        synth.synthesize("Hello.", SpeakerParams("x", variant="no_such_variant"))
    with pytest.raises(ValueError):
        SpeakerParams("x", voice="fr")
    with pytest.raises(ValueError):
        SpeakerParams("x", rate=20)
    assert len(synth.synthesize("Still fine.", SPEAKER)[0]) > 0  # the helper survived


# A pair espeak-ng 1.51 (Debian 12) kills its process on, through the library API (not the CLI).
CRASHING_TEXT = "Theo is leaving her wonderful penguin in the laboratory."
CRASHING_SPEAKER = SpeakerParams("108", voice="en-029", variant="rob", pitch=31, pitch_range=89, rate=152, volume=79)


def test_an_espeak_crash_is_reported_and_the_corpus_draws_another_text(synth):
    from training.data.corpus import CorpusConfig, SampleGenerator, stable_hash

    try:
        synth.synthesize(CRASHING_TEXT, CRASHING_SPEAKER)
    except EspeakCrash as exc:
        assert "laboratory" in str(exc) and "en-029+rob" in str(exc)
    else:
        pytest.skip("this espeak-ng no longer crashes on the pair")
    assert len(synth.synthesize("Still fine.", SPEAKER)[0]) > 0  # the helper survived
    # Sample train-374 of seed 1 draws a text with that ending for that voice; the next draw replaces it.
    sample = SampleGenerator(CorpusConfig(seed=1, speech_only=True)).generate("train", 374)
    first = transcript_from_seed(stable_hash(1, "transcript", "train", 374))
    assert first.endswith(CRASHING_TEXT) and sample.transcript == transcript_from_seed(
        stable_hash(1, "transcript", "train", 374, 1))
    assert str(sample.speaker["speaker_id"]) == "108" and len(sample.waveform) > 0


# -- speakers and transcripts ----------------------------------------------------------------------


def test_speaker_params(synth):
    speakers = [SpeakerParams.from_seed(f"s{i}", i) for i in range(60)]
    assert SpeakerParams.from_seed("s3", 3) == speakers[3]
    assert all(SpeakerParams.from_dict(s.to_dict()) == s for s in speakers)
    variants = {s.variant for s in speakers}
    assert variants & set(MALE_VARIANTS) and variants & set(FEMALE_VARIANTS)
    assert len({s.voice for s in speakers}) >= 5
    assert len({s.rate for s in speakers}) >= 30 and len({s.pitch for s in speakers}) >= 25
    installed = synth.variants
    assert set(MALE_VARIANTS + FEMALE_VARIANTS) | (set(NEUTRAL_VARIANTS) - {None}) <= installed


def test_transcript_variety():
    texts = [transcript_from_seed(seed) for seed in range(200)]
    assert texts == [transcript_from_seed(seed) for seed in range(200)]
    assert len(set(texts)) >= 185
    assert sum("?" in t for t in texts) >= 30
    assert sum("!" in t for t in texts) >= 20
    assert sum(bool(re.search(r"\d", t)) for t in texts) >= 40
    assert sum(bool(re.search(r"[$£€]\d", t)) for t in texts) >= 5
    assert sum(bool(re.search(r"\b(18|19|20)\d\d\b", t)) for t in texts) >= 5
    assert sum(len(re.findall(r"[.!?][\"”]? [A-Z\"“]", t)) >= 1 for t in texts) >= 60  # several sentences
    assert sum('"' in t or "“" in t for t in texts) >= 10
    assert sum(bool(re.search(r" [—–-] ", t)) for t in texts) >= 5
    assert sum(bool(re.search(r"\w['’]\w", t)) for t in texts) >= 40
    assert sum("," in t for t in texts) >= 60
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) <= 2 and max(lengths) >= 30
    vocabulary = {w.strip(".,!?\"“”—–-").lower() for t in texts for w in t.split()}
    assert len(vocabulary) >= 800


def test_transcript_durations(corpus):
    durations = [len(wave) / SAMPLE_RATE for _, _, wave, _ in corpus]
    assert min(durations) < 3.0 and max(durations) > 8.0
    assert all(0.3 < d < 20.0 for d in durations)


# -- visemes and the mouth track -------------------------------------------------------------------


def test_every_emitted_phoneme_has_a_viseme(corpus):
    seen = {e.phoneme for _, _, _, events in corpus for e in events}
    unknown = seen - set(PHONEME_VISEMES)
    assert not unknown, unknown
    for name in PHONEME_VISEMES:
        assert all(v in VISEMES for v in phoneme_visemes(name))
    assert phoneme_visemes("t[") == ("alveolar",) and phoneme_visemes("_:") == ("silence",)
    assert phoneme_visemes("zz9") == ("alveolar",)  # unknown mnemonics still get a viseme


def test_mouth_track_shape_and_range(corpus):
    _, _, wave, events = corpus[0]
    frames = -(-len(wave) // SAMPLES_PER_FRAME)
    track = mouth_track(events, frames)
    assert track.shape == (frames, 3) and track.dtype == np.float32
    assert track.min() >= 0.0 and track.max() <= 1.0
    assert track[:, 0].max() > 0.5  # vowels open the mouth
    silent = mouth_track([], 5)
    assert np.allclose(silent[:, 0], 0.0)
    tail = mouth_track(events, frames + 50)  # long after the speech the mouth is at rest
    rest = VISEMES["silence"]
    assert np.allclose(tail[-1], [rest.open, rest.wide, rest.round], atol=1e-3)


def _lagged_corr(mouth: np.ndarray, energy: np.ndarray, lag: int) -> float:
    """corr(mouth[f], energy[f + lag])."""
    if lag > 0:
        mouth, energy = mouth[:-lag], energy[lag:]
    elif lag < 0:
        mouth, energy = mouth[-lag:], energy[:lag]
    return float(np.corrcoef(mouth, energy)[0, 1])


def test_mouth_opening_follows_audio_energy(corpus):
    """The issue's requirement: per-frame mouth opening correlates with per-frame audio energy, and
    best when aligned: lag 0 beats every lag of 3 to 5 frames either way."""
    lags = list(range(-5, 6))
    per_lag: dict[int, list[float]] = {lag: [] for lag in lags}
    for _, _, wave, events in corpus:
        frames = -(-len(wave) // SAMPLES_PER_FRAME)
        if frames < 15:  # too short for a lag of 5 frames to mean anything
            continue
        padded = np.zeros(frames * SAMPLES_PER_FRAME, dtype=np.float64)
        padded[: len(wave)] = wave
        rms = np.sqrt((padded.reshape(frames, SAMPLES_PER_FRAME) ** 2).mean(1))
        # Loudness in dB, floored at -60 dBFS: silence vs speech matters, not the exact floor.
        energy = 20 * np.log10(np.maximum(rms, 1e-3))
        opening = mouth_track(events, frames)[:, 0]
        for lag in lags:
            per_lag[lag].append(_lagged_corr(opening, energy, lag))
    assert len(per_lag[0]) >= 15
    mean = {lag: float(np.mean(v)) for lag, v in per_lag.items()}
    log.info("mean corr(mouth open, log RMS) by lag: %s", {k: round(v, 3) for k, v in mean.items()})
    assert mean[0] > 0.3, mean
    assert np.mean(np.array(per_lag[0]) > 0) >= 0.9, per_lag[0]
    for lag in (-5, -4, -3, 3, 4, 5):
        assert mean[0] > mean[lag], (lag, mean)


def test_bilabials_close_the_mouth(corpus):
    checked = 0
    for _, _, wave, events in corpus:
        frames = -(-len(wave) // SAMPLES_PER_FRAME)
        track = mouth_track(events, frames)
        for e in events:
            if e.phoneme in ("m", "p", "b") and e.end - e.start > 1 / 25:
                frame = int((e.start + e.end) / 2 * 25)
                assert track[frame, 0] < 0.1, (e, track[frame])
                checked += 1
    assert checked >= 20
