"""Phonemes -> visemes -> a per-frame mouth track (open, wide, round), for the synthetic corpus.

espeak-ng's English phoneme mnemonics (as its en, en-us and other English voices emit them) map to
fourteen visemes, each a target mouth shape: open (jaw/lip opening), wide (lip-corner spread) and
round (lip rounding/protrusion), all in 0..1. Diphthongs glide between two visemes.

`mouth_track` turns timed phonemes into a track [F,3] sampled at video frame centres, with
coarticulation: every phoneme pulls the mouth towards its target with a weight ("dominance") that is
full inside the phoneme and decays exponentially outside it, and the track is the weighted mean of
the targets (Cohen & Massaro's dominance model). Vowels therefore blend into their neighbours,
while consonants that barely involve the lips (k, t, h) hardly move them. Lip closure is visually
decisive and does not blend: bilabials (p b m) shut the mouth fully inside their span, with a
smooth raised-cosine approach and release either side, and labiodentals (f v) mostly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.schema import PhonemeEvent

CLOSURE_RAMP_S = 0.05  # lips take ~50 ms to close onto a bilabial and to open after it
_DIPHTHONG_SPLIT = 0.55  # where in a diphthong the first target hands over to the second


@dataclass(frozen=True)
class Viseme:
    """A target mouth shape and how strongly a phoneme holds it against its neighbours.

    open, wide, round: targets in 0..1. dominance / shape_dominance: weight of the open target /
    of the lip shape (wide, round) inside the phoneme. spread_s: time constant (s) of the
    weight's exponential decay outside the phoneme. closure: how far the lips shut the mouth
    regardless of the blend (1 = fully closed).
    """

    name: str
    open: float
    wide: float
    round: float
    dominance: float = 1.0
    shape_dominance: float = 1.0
    spread_s: float = 0.05
    closure: float = 0.0


VISEMES: dict[str, Viseme] = {
    v.name: v
    for v in (
        Viseme("silence", 0.00, 0.35, 0.20, dominance=1.0, shape_dominance=0.6, spread_s=0.06),
        Viseme("bilabial", 0.00, 0.40, 0.25, dominance=2.0, shape_dominance=0.4, spread_s=0.03, closure=1.0),
        Viseme("labiodental", 0.10, 0.45, 0.10, dominance=2.0, shape_dominance=1.0, spread_s=0.03, closure=0.6),
        Viseme("dental", 0.22, 0.50, 0.10, dominance=1.2, shape_dominance=0.8, spread_s=0.035),
        Viseme("alveolar", 0.20, 0.50, 0.12, dominance=0.8, shape_dominance=0.4, spread_s=0.035),
        Viseme("postalveolar", 0.18, 0.25, 0.65, dominance=1.0, shape_dominance=2.5, spread_s=0.05),
        Viseme("velar", 0.30, 0.45, 0.15, dominance=0.6, shape_dominance=0.3, spread_s=0.035),
        Viseme("glottal", 0.40, 0.45, 0.15, dominance=0.15, shape_dominance=0.15, spread_s=0.03),
        Viseme("r", 0.22, 0.30, 0.50, dominance=1.0, shape_dominance=2.0, spread_s=0.045),
        Viseme("open_vowel", 0.85, 0.55, 0.10, dominance=1.0, shape_dominance=1.0, spread_s=0.05),
        Viseme("mid_vowel", 0.50, 0.50, 0.12, dominance=1.0, shape_dominance=1.0, spread_s=0.05),
        Viseme("spread_vowel", 0.28, 0.85, 0.00, dominance=1.0, shape_dominance=1.5, spread_s=0.05),
        Viseme("rounded_vowel", 0.28, 0.10, 0.95, dominance=1.0, shape_dominance=2.0, spread_s=0.07),
        Viseme("rounded_open_vowel", 0.55, 0.20, 0.70, dominance=1.0, shape_dominance=1.5, spread_s=0.06),
    )
}

# Every mnemonic espeak-ng 1.51 emitted over 640 transcripts x 8 English accents (en-us, en,
# en-gb-x-rp, en-gb-scotland, en-gb-x-gbclan, en-gb-x-gbcwmd, en-us-nyc, en-029), plus the rest of
# its English phoneme table that those happened not to use. Tuples are diphthongs (first, second).
PHONEME_VISEMES: dict[str, str | tuple[str, str]] = {
    # pauses
    "_": "silence", "_:": "silence", "_!": "silence", "_^_": "silence", "_;_": "silence",
    # bilabial, labiodental, dental
    "p": "bilabial", "b": "bilabial", "m": "bilabial",
    "f": "labiodental", "v": "labiodental",
    "T": "dental", "D": "dental",
    # alveolar stops, nasals, fricatives, laterals (with espeak's allophones: flapped t#, dental t[,
    # unreleased t2, syllabic n- and @L "purple", dark l/)
    "t": "alveolar", "d": "alveolar", "n": "alveolar", "s": "alveolar", "z": "alveolar", "l": "alveolar",
    "t#": "alveolar", "t[": "alveolar", "t2": "alveolar", "d#": "alveolar", "n-": "alveolar",
    "l/": "alveolar", "l-": "alveolar", "@L": ("mid_vowel", "alveolar"),
    # postalveolar
    "S": "postalveolar", "Z": "postalveolar", "tS": "postalveolar", "dZ": "postalveolar",
    # velar, glottal
    "k": "velar", "g": "velar", "N": "velar", "x": "velar",
    "h": "glottal", "?": "glottal",
    # approximants: r (r- is syllabic r, "printer"), w (w# and W: Scottish "wh"), j (yes)
    "r": "r", "r-": "r", "r/": "r",
    "w": "rounded_vowel", "w#": "rounded_vowel", "W": "rounded_vowel",
    "j": "spread_vowel", ";": "spread_vowel",
    # open vowels: trap/bath (a, aa), father (A:, A@ "are"), lot (0: [ɑ] in US), strut (V), a# "about"
    "a": "open_vowel", "aa": "open_vowel", "a#": "open_vowel", "A:": "open_vowel", "A@": "open_vowel",
    "0": "open_vowel", "V": "open_vowel", "VR": "open_vowel",
    # mid vowels: schwas (@, @2, @5, @-), nurse (3, 3:), dress (E), square (e@), kit allophones
    "@": "mid_vowel", "@2": "mid_vowel", "@5": "mid_vowel", "@-": "mid_vowel",
    "3": "mid_vowel", "3:": "mid_vowel", "E": "mid_vowel", "e": "mid_vowel", "e@": "mid_vowel",
    "I#": "mid_vowel", "IR": "mid_vowel",
    # spread vowels: fleece (i:), happY (i), kit (I, I2), near (i@, i@3)
    "i:": "spread_vowel", "i": "spread_vowel", "I": "spread_vowel", "I2": "spread_vowel",
    "i@": ("spread_vowel", "mid_vowel"), "i@3": ("spread_vowel", "mid_vowel"),
    # rounded vowels: goose (u:), foot (U), cure (U@); thought/north (O:, O@, o@, O2)
    "u:": "rounded_vowel", "U": "rounded_vowel", "U@": ("rounded_vowel", "mid_vowel"),
    "O:": "rounded_open_vowel", "O@": "rounded_open_vowel", "o@": "rounded_open_vowel",
    "O2": "rounded_open_vowel", "O": "rounded_open_vowel",
    # diphthongs
    "aI": ("open_vowel", "spread_vowel"), "aI2": ("open_vowel", "spread_vowel"),
    "aI3": ("open_vowel", "spread_vowel"), "aI@": ("open_vowel", "mid_vowel"),
    "aU": ("open_vowel", "rounded_vowel"), "eI": ("mid_vowel", "spread_vowel"),
    "oU": ("rounded_open_vowel", "rounded_vowel"), "OI": ("rounded_open_vowel", "spread_vowel"),
}

_VOWEL_LETTERS = set("aeiouAEIOUV03@")


def phoneme_visemes(phoneme: str) -> tuple[str, ...]:
    """The viseme(s) of an espeak-ng mnemonic: one, or two for a diphthong.

    Mnemonics missing from PHONEME_VISEMES (other accents, future espeak versions) fall back to
    their base phoneme with espeak's modifier marks stripped ("t[" -> "t", "aI3" -> "aI"), then
    to a guess from the first letter.
    """
    if phoneme.startswith("_"):
        return ("silence",)
    name = phoneme
    while name:
        found = PHONEME_VISEMES.get(name)
        if found is not None:
            return found if isinstance(found, tuple) else (found,)
        name = name[:-1]
    return ("mid_vowel",) if phoneme[:1] in _VOWEL_LETTERS else ("alveolar",)


def _segments(phonemes: list[PhonemeEvent]) -> list[tuple[float, float, Viseme]]:
    """(start s, end s, viseme) per phoneme, diphthongs split in two."""
    out = []
    for ev in phonemes:
        names = phoneme_visemes(ev.phoneme)
        if len(names) == 1:
            out.append((ev.start, ev.end, VISEMES[names[0]]))
        else:
            mid = ev.start + _DIPHTHONG_SPLIT * (ev.end - ev.start)
            out.append((ev.start, mid, VISEMES[names[0]]))
            out.append((mid, ev.end, VISEMES[names[1]]))
    return out


def mouth_track(phonemes: list[PhonemeEvent], num_frames: int, fps: float = 25.0) -> np.ndarray:
    """Timed phonemes -> mouth parameters float32 [F,3] (open, wide, round), each in [0, 1],
    sampled at frame centres (f + 0.5) / fps; frames outside every phoneme's reach are at rest
    (the silence viseme)."""
    rest = VISEMES["silence"]
    rest_target = np.array([rest.open, rest.wide, rest.round])
    segments = _segments(phonemes)
    if num_frames <= 0:
        return np.zeros((0, 3), dtype=np.float32)
    if not segments:
        return np.tile(rest_target, (num_frames, 1)).astype(np.float32)
    t = (np.arange(num_frames) + 0.5) / fps  # [F]
    start = np.array([s for s, _, _ in segments])  # [P]
    end = np.array([e for _, e, _ in segments])
    visemes = [v for _, _, v in segments]
    target = np.array([[v.open, v.wide, v.round] for v in visemes])  # [P,3]
    dominance = np.array([[v.dominance, v.shape_dominance, v.shape_dominance] for v in visemes])  # [P,3]
    spread = np.array([v.spread_s for v in visemes])
    closure = np.array([v.closure for v in visemes])

    distance = np.maximum(0.0, np.maximum(start[None] - t[:, None], t[:, None] - end[None]))  # [F,P] s
    influence = np.exp(-distance / spread[None])  # [F,P]: 1 inside the phoneme
    weight = influence[:, :, None] * dominance[None]  # [F,P,3]
    # A faint pull towards rest, so that frames far from any phoneme settle there instead of 0/0.
    floor = 1e-6
    track = (np.einsum("fpc,pc->fc", weight, target) + floor * rest_target) / (weight.sum(1) + floor)

    ramp = np.where(distance < CLOSURE_RAMP_S, np.cos(0.5 * np.pi * distance / CLOSURE_RAMP_S) ** 2, 0.0)
    shut = (ramp * closure[None]).max(1)  # [F]
    track[:, 0] *= 1.0 - shut
    return np.clip(track, 0.0, 1.0).astype(np.float32)
