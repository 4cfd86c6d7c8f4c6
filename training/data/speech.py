"""Synthetic speech: espeak-ng voices, phoneme timings and 16 kHz waveforms for the corpus.

`EspeakSynthesizer.synthesize(text, speaker)` returns a float32 waveform [S] at 16 kHz and the
phonemes espeak-ng spoke, each with its time span in that waveform (seconds) and the transcript
characters it belongs to. `SpeakerParams` describes a voice; `SpeakerParams.from_seed` draws one.

Determinism needs process isolation. espeak-ng keeps synthesis state in C statics that nothing
resets (the pitch-flutter index, the glottal phase, the echo buffer, the noise generators), so
in-process calls with the same text and voice drift by a few hundred samples from call to call,
and `espeak_Terminate` + `espeak_Initialize` (which does reset them) deadlocks now and then on
1.51's event thread. So each synthesizer owns a small helper process (a "zygote") that loads the
library and calls `espeak_Initialize` once, then forks a child per request: every child starts from
the same freshly initialised state, synthesises, pipes the raw result back and exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import weakref
from bisect import bisect_right
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data.schema import PhonemeEvent

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
ESPEAK_SAMPLE_RATE = 22_050  # what espeak-ng's formant synthesiser produces
# 16000 / 22050 reduced: the waveform is resampled by exactly UP / DOWN.
_UP, _DOWN = 320, 441

# Our voice names -> espeak-ng voice names (its British voice is plain "en").
VOICES: dict[str, str] = {
    "en-us": "en-us",
    "en-gb": "en",
    "en-gb-x-rp": "en-gb-x-rp",
    "en-gb-scotland": "en-gb-scotland",
    "en-gb-x-gbclan": "en-gb-x-gbclan",
    "en-gb-x-gbcwmd": "en-gb-x-gbcwmd",
    "en-us-nyc": "en-us-nyc",
    "en-029": "en-029",
}
_VOICE_WEIGHTS = {"en-us": 4, "en-gb": 3, "en-gb-x-rp": 1, "en-gb-scotland": 1, "en-gb-x-gbclan": 1,
                  "en-gb-x-gbcwmd": 1, "en-us-nyc": 1, "en-029": 1}

# Variants (files in espeak-ng-data/voices/!v) that sound like a person speaking plainly; the
# robotic, whispering, echoing and comic ones are left out, and so are "iven" and "antonio",
# whose formant gains clip the signal inside espeak even at volume 70.
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Alex", "Andy", "Denis", "Diogo",
                 "Hugo", "Lee", "Mike", "david", "edward", "gustave", "michel", "miguel", "paul",
                 "quincy", "rob", "robert", "sandro", "travis")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty",
                   "belinda", "linda", "steph", "steph2", "grandma")
NEUTRAL_VARIANTS = (None, "klatt", "klatt2", "klatt3")  # the language's default voice, or the Klatt synth

# Words of the transcript as espeak-ng reads them: letters/digits with inner apostrophes, hyphens,
# and the dots, commas and colons inside numbers and abbreviations; a currency sign before and a
# percent sign after belong to the word because espeak speaks them with it ("$4.99", "50%").
_WORD_RE = re.compile(r"[$£€]?\w+(?:['’.,:\-]\w+)*%?")


def is_pause(phoneme: str) -> bool:
    """Whether a phoneme mnemonic is one of espeak-ng's pauses (silence gaps)."""
    return phoneme.startswith("_")


@dataclass(frozen=True)
class SpeakerParams:
    """A voice: espeak-ng language voice + variant and prosody settings.

    voice: a key of VOICES. variant: a file name in espeak-ng's voices/!v (e.g. "m3", "f2",
    "klatt"), or None for the language's default voice. pitch and pitch_range: 0..99 (50 = the
    variant's own). rate: words per minute (espeak accepts 80..450). volume: 0..200 (100 = normal).
    """

    speaker_id: str
    voice: str = "en-us"
    variant: str | None = None
    pitch: int = 50
    pitch_range: int = 50
    rate: int = 175
    volume: int = 100

    def __post_init__(self) -> None:
        if self.voice not in VOICES:
            raise ValueError(f"unknown voice {self.voice!r}; expected one of {sorted(VOICES)}")
        if self.variant is not None and not re.fullmatch(r"[A-Za-z0-9_]+", self.variant):
            raise ValueError(f"bad variant name {self.variant!r}")
        for name, lo, hi in (("pitch", 0, 99), ("pitch_range", 0, 99), ("rate", 80, 450), ("volume", 0, 200)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"{name}={value} outside {lo}..{hi}")

    @property
    def espeak_voice(self) -> str:
        """The name passed to espeak_SetVoiceByName ("voice+variant")."""
        base = VOICES[self.voice]
        return base if self.variant is None else f"{base}+{self.variant}"

    @classmethod
    def from_seed(cls, speaker_id: str, seed: int) -> SpeakerParams:
        """A random voice, the same for the same seed: ~45% male, ~45% female, ~10% default/Klatt
        variants, over eight English accents, with pitch, range, rate and volume drawn uniformly."""
        rng = np.random.default_rng(seed)
        voices = list(_VOICE_WEIGHTS)
        weights = np.array([_VOICE_WEIGHTS[v] for v in voices], dtype=np.float64)
        voice = voices[int(rng.choice(len(voices), p=weights / weights.sum()))]
        group = (MALE_VARIANTS, FEMALE_VARIANTS, NEUTRAL_VARIANTS)[int(rng.choice(3, p=[0.45, 0.45, 0.10]))]
        variant = group[int(rng.integers(len(group)))]
        return cls(
            speaker_id=speaker_id,
            voice=voice,
            variant=variant,
            pitch=int(rng.integers(25, 76)),
            pitch_range=int(rng.integers(20, 91)),
            rate=int(rng.integers(130, 211)),
            volume=int(rng.integers(70, 101)),  # louder saturates some variants
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpeakerParams:
        return cls(
            speaker_id=str(d["speaker_id"]),
            voice=str(d.get("voice", "en-us")),
            variant=None if d.get("variant") is None else str(d["variant"]),
            pitch=int(d.get("pitch", 50)),
            pitch_range=int(d.get("pitch_range", 50)),
            rate=int(d.get("rate", 175)),
            volume=int(d.get("volume", 100)),
        )


# ---------------------------------------------------------------------------------------------
# espeak-ng's C API (speak_lib.h, API revision 12), as much of it as we call.

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: retrieval through the callback, Synth blocks
_INITIALIZE_PHONEME_EVENTS = 0x0001
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_BUFFER_MS = 200  # also sizes the event list per callback (40 + 20 entries), ample for ~15 phonemes/s
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT. text_position is 1-based, in characters; sample is the 22050 Hz sample index
    (audio_position is the same instant rounded down to ms); phoneme events carry length 0 and the
    start of the word being spoken, word events the word's start and length."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def _load_espeak() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1")
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib


# Raw events as they cross the pipe: (type, text_position, length, sample, phoneme name or "").
_RawEvent = tuple[int, int, int, int, str]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, struct.pack("<Q", len(data)) + data)


def _read_exact(fd: int, n: int, deadline_s: float | None = None) -> bytes | None:
    """n bytes from fd, or None at EOF. With deadline_s, raises TimeoutError when a read waits
    longer than that."""
    parts, got = [], 0
    while got < n:
        if deadline_s is not None and not select.select([fd], [], [], deadline_s)[0]:
            raise TimeoutError(f"no data from the espeak helper within {deadline_s:.0f} s")
        part = os.read(fd, min(n - got, 1 << 20))
        if not part:
            return None
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _recv(fd: int, deadline_s: float | None = None) -> Any:
    header = _read_exact(fd, 8, deadline_s)
    if header is None:
        raise EOFError
    body = _read_exact(fd, struct.unpack("<Q", header)[0], deadline_s)
    if body is None:
        raise EOFError
    return pickle.loads(body)


def _synthesize_in_child(lib: ctypes.CDLL, request: dict[str, Any]) -> tuple[bytes, list[_RawEvent]]:
    """Runs in a freshly forked child: one espeak_Synth call, all its audio and events."""
    chunks: list[bytes] = []
    events: list[_RawEvent] = []

    def on_audio(wav: Any, num_samples: int, ev: Any) -> int:
        if wav and num_samples > 0:
            chunks.append(ctypes.string_at(wav, num_samples * 2))
        i = 0
        while ev[i].type != 0:  # espeakEVENT_LIST_TERMINATED
            e = ev[i]
            name = e.id.string.split(b"\0", 1)[0].decode("utf-8", "replace") if e.type == _EVENT_PHONEME else ""
            events.append((e.type, e.text_position, e.length, e.sample, name))
            i += 1
        return 0

    callback = _SynthCallback(on_audio)
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(request["voice"].encode()) != 0:
        raise ValueError(f"espeak-ng has no voice {request['voice']!r}")
    # After the voice, which brings defaults of its own.
    for param, value in ((_PARAM_RATE, request["rate"]), (_PARAM_VOLUME, request["volume"]),
                         (_PARAM_PITCH, request["pitch"]), (_PARAM_RANGE, request["pitch_range"])):
        if lib.espeak_SetParameter(param, value, 0) != 0:
            raise RuntimeError(f"espeak_SetParameter({param}, {value}) failed")
    text = request["text"].encode("utf-8")
    # Synchronous mode: espeak_Synth returns once every callback has run, so there is nothing for
    # espeak_Synchronize to wait for (and it polls the async queue, which this mode never starts).
    status = lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != 0:
        raise RuntimeError(f"espeak_Synth failed with status {status}")
    return b"".join(chunks), events


def _serve_zygote() -> None:
    """The helper process: initialise espeak-ng once, then fork one child per request.

    Protocol on stdin/stdout: length-prefixed pickles. The first reply is a handshake
    {"sample_rate", "version", "variants"}; each request dict is answered by ("ok", (pcm, events)),
    ("error", message), or ("crashed", message) when the child died mid-synthesis. Exits at EOF on stdin.
    """
    fd_in, fd_out = 0, os.dup(1)
    os.dup2(2, 1)  # stray prints from the library must not corrupt the protocol stream
    lib = _load_espeak()
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, None, _INITIALIZE_PHONEME_EVENTS)
    if rate != ESPEAK_SAMPLE_RATE:
        _send(fd_out, {"error": f"espeak_Initialize returned {rate}"})
        return
    data_path = ctypes.c_char_p()
    version = lib.espeak_Info(ctypes.byref(data_path)).decode()
    variants_dir = Path(data_path.value.decode()) / "voices" / "!v" if data_path.value else None
    variants = sorted(p.name for p in variants_dir.iterdir()) if variants_dir and variants_dir.is_dir() else []
    _send(fd_out, {"sample_rate": rate, "version": version, "variants": variants})
    while True:
        try:
            request = _recv(fd_in)
        except EOFError:
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                _send(write_end, ("ok", _synthesize_in_child(lib, request)))
            except BaseException as exc:  # reported to the parent: a child must reach os._exit
                _send(write_end, ("error", f"{type(exc).__name__}: {exc}"))
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            reply = pipe.read()  # until the child exits
        _, status = os.waitpid(pid, 0)
        # Relay the child's framed reply as it is, unless it died before writing all of it.
        if len(reply) < 8 or len(reply) != 8 + struct.unpack("<Q", reply[:8])[0]:
            _send(fd_out, ("crashed", f"espeak child died (wait status {status})"))
        else:
            _write_all(fd_out, reply)


def _stop_zygote(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.stdin.close()  # EOF: the helper's loop returns
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()


# ---------------------------------------------------------------------------------------------
# 22050 Hz -> 16000 Hz: a polyphase windowed-sinc resampler in numpy.

_HALF_TAPS = 48  # taps each side, in input samples
_CUTOFF_HZ = 7_400.0  # passband edge below the 8 kHz output Nyquist, leaving room for the transition
_KAISER_BETA = 8.0  # ~80 dB stopband


def _resampling_matrix() -> tuple[np.ndarray, int]:
    """(G [W,UP], W): output samples j*UP .. j*UP + UP-1 = x[j*DOWN : j*DOWN + W] @ G, with x
    zero-padded by _HALF_TAPS - 1 in front. Output sample j*UP + p sits at input time
    (j*UP + p) * DOWN / UP, and its phase p of the windowed-sinc filter is column p."""
    taps = np.arange(-_HALF_TAPS + 1, _HALF_TAPS + 1)  # input offsets around floor(t)
    width = (_UP - 1) * _DOWN // _UP + 2 * _HALF_TAPS
    g = np.zeros((width, _UP), dtype=np.float64)
    fc = _CUTOFF_HZ / ESPEAK_SAMPLE_RATE
    for p in range(_UP):
        base, frac = divmod(p * _DOWN, _UP)
        tau = taps - frac / _UP  # input sample positions relative to the output instant
        window = np.i0(_KAISER_BETA * np.sqrt(1 - (tau / (_HALF_TAPS + 1)) ** 2)) / np.i0(_KAISER_BETA)
        h = np.sinc(2 * fc * tau) * window
        g[base + taps + _HALF_TAPS - 1, p] = h / h.sum()  # unit DC gain per phase
    return g, width


_RESAMPLER: tuple[np.ndarray, int] | None = None


def resample_to_16k(pcm: np.ndarray) -> np.ndarray:
    """int16 or float [N] at 22050 Hz -> float64 [ceil(N * 320 / 441)] at 16 kHz, time-aligned
    (output sample n is the input's value at n / 16000 s; linear phase, no delay)."""
    global _RESAMPLER
    if _RESAMPLER is None:
        _RESAMPLER = _resampling_matrix()
    g, width = _RESAMPLER
    n_out = -(-len(pcm) * _UP // _DOWN)
    blocks = -(-n_out // _UP)
    padded = np.zeros(blocks * _DOWN + width, dtype=np.float64)
    padded[_HALF_TAPS - 1:_HALF_TAPS - 1 + len(pcm)] = pcm
    windows = np.lib.stride_tricks.as_strided(padded, shape=(blocks, width), strides=(_DOWN * 8, 8))
    return (windows @ g).reshape(-1)[:n_out]


# ---------------------------------------------------------------------------------------------


def _word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _WORD_RE.finditer(text)]


def _span_at(spans: list[tuple[int, int]], starts: list[int], pos: int, text_len: int) -> tuple[int, int]:
    """The word containing character pos; else the next word (espeak sometimes points at the
    space or sign before it); else a one-character span at pos."""
    i = bisect_right(starts, pos) - 1
    if i >= 0 and pos < spans[i][1]:
        return spans[i]
    if i + 1 < len(spans):
        return spans[i + 1]
    pos = min(max(pos, 0), max(text_len - 1, 0))
    return pos, min(pos + 1, text_len)


def phoneme_events(text: str, raw: list[_RawEvent], n_in: int, n_out: int) -> list[PhonemeEvent]:
    """espeak-ng's phoneme events -> contiguous PhonemeEvents covering [0, n_out / 16000] s, their
    boundaries on the 16 kHz sample grid.

    raw: events from one espeak_Synth call; n_in: its sample count at 22050 Hz; n_out: the
    resampled count at 16 kHz. A phoneme lasts until the next one starts; silence before the first
    is a "_" pause; zero-length phonemes are dropped.

    Characters: espeak tags each phoneme with the start of the word it is speaking, so a spoken
    phoneme gets that word's span (all of "42" -> "forty two" maps to "42"). Words that espeak
    pronounces together from one dictionary entry ("in the", "there are", "of a") come tagged with
    the first word only; the span is widened over the words it skipped, so every word of the text
    is covered. A pause gets the characters between the words around it (spaces, punctuation).
    """
    spans = _word_spans(text)
    starts = [s for s, _ in spans]
    marks: list[tuple[int, str, int, int]] = []  # (sample at 22050 Hz, phoneme, char_start, char_end)
    last = (0, 0)
    for etype, position, _length, sample, name in raw:
        if etype != _EVENT_PHONEME or not name:
            continue
        sample = min(max(sample, marks[-1][0] if marks else 0), n_in)  # time-ordered, inside the audio
        if is_pause(name):
            marks.append((sample, name, -1, -1))
            continue
        span = _span_at(spans, starts, position - 1, len(text))
        if span[0] < last[0]:
            span = last  # spans never run backwards
        last = span
        marks.append((sample, name, *span))
    if not marks or marks[0][0] > 0:
        marks.insert(0, (0, "_", -1, -1))

    groups = sorted({(cs, ce) for _, _, cs, ce in marks if cs >= 0})
    widened: dict[tuple[int, int], int] = {}
    for k, (cs, ce) in enumerate(groups):
        limit = groups[k + 1][0] if k + 1 < len(groups) else len(text)
        j, end = bisect_right(starts, ce - 1), ce
        while j < len(spans) and spans[j][1] <= limit:
            end = spans[j][1]
            j += 1
        widened[(cs, ce)] = end
    marks = [(t, name, cs, widened[(cs, ce)]) if cs >= 0 else (t, name, cs, ce) for t, name, cs, ce in marks]

    next_start = []  # the start of the next spoken word, for the pauses
    upcoming = len(text)
    for _, _, cs, _ in reversed(marks):
        next_start.append(upcoming)
        if cs >= 0:
            upcoming = cs
    next_start.reverse()
    # Boundaries on the 16 kHz sample grid, so that events tile the waveform exactly.
    bounds = [min((m[0] * _UP + _DOWN // 2) // _DOWN, n_out) for m in marks[1:]] + [n_out]
    events: list[PhonemeEvent] = []
    start, prev_end = 0, 0
    for (_, name, cs, ce), nxt, end in zip(marks, next_start, bounds):
        if cs < 0:
            # Between two words, or inside one (a pause between the parts of a number).
            cs, ce = min(prev_end, nxt), max(prev_end, nxt)
        else:
            prev_end = ce
        if end > start:
            events.append(PhonemeEvent(name, start / SAMPLE_RATE, end / SAMPLE_RATE, cs, ce))
            start = end
    return events


class EspeakCrash(RuntimeError):
    """espeak-ng died (e.g. SIGSEGV) synthesising a text: 1.51 does so, reproducibly, on a few
    (text, voice) pairs through the library API (seen: a sentence ending "... in the laboratory." with
    en-029+rob at pitch 31, rate 152). The helper survives; the caller may try another text."""


class EspeakSynthesizer:
    """Text + SpeakerParams -> (waveform float32 [S] at 16 kHz in [-1, 1], phoneme events).

    Deterministic: the same text and speaker give identical samples and events, whatever was
    synthesised before (see the module docstring for how). Each instance owns one helper process
    running espeak-ng, started on first use and stopped by close() (or when the instance is
    garbage-collected, or at EOF when this process exits); call it thousands of times.

    Not thread-safe: an instance has one request in flight on its pipes at a time, so use one
    instance per thread (or process). Instances are independent, each with its own espeak-ng.
    """

    def __init__(self, timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s
        self.version = ""
        self.variants: frozenset[str] = frozenset()
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    def _start(self) -> subprocess.Popen:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"  # no BLAS threads in a forking process
        proc = subprocess.Popen(
            [sys.executable, "-c", "from training.data.speech import _serve_zygote; _serve_zygote()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        self._finalizer = weakref.finalize(self, _stop_zygote, proc)
        try:
            hello = _recv(proc.stdout.fileno(), self.timeout_s)
        except (EOFError, TimeoutError) as exc:
            self._finalizer()
            raise RuntimeError("the espeak-ng helper process did not start") from exc
        if "error" in hello:
            self._finalizer()
            raise RuntimeError(hello["error"])
        self.version = hello["version"]
        self.variants = frozenset(hello["variants"])
        log.info("espeak-ng %s helper started (pid %d, %d variants)", self.version, proc.pid, len(self.variants))
        return proc

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None

    def __enter__(self) -> EspeakSynthesizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def synthesize_raw(self, text: str, speaker: SpeakerParams) -> tuple[np.ndarray, list[_RawEvent]]:
        """espeak-ng's own output: int16 PCM [N] at 22050 Hz and its raw events."""
        if not text.strip():
            raise ValueError("nothing to say: the text is empty")
        if "\0" in text:
            raise ValueError("text contains a NUL character")
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        if speaker.variant is not None and speaker.variant not in self.variants:
            raise ValueError(f"espeak-ng has no variant {speaker.variant!r}")
        request = {"text": text, "voice": speaker.espeak_voice, "rate": speaker.rate, "volume": speaker.volume,
                   "pitch": speaker.pitch, "pitch_range": speaker.pitch_range}
        try:
            _send(self._proc.stdin.fileno(), request)
            status, payload = _recv(self._proc.stdout.fileno(), self.timeout_s)
        except (OSError, EOFError, TimeoutError) as exc:
            self.close()  # a wedged or dead helper is replaced on the next call
            raise RuntimeError(f"espeak-ng helper failed: {exc}") from exc
        if status == "crashed":
            raise EspeakCrash(f"espeak-ng crashed on {text!r} with voice {speaker.espeak_voice!r}: {payload}")
        if status != "ok":
            raise RuntimeError(f"espeak-ng: {payload}")
        pcm, events = payload
        return np.frombuffer(pcm, dtype=np.int16), events

    def synthesize(self, text: str, speaker: SpeakerParams) -> tuple[np.ndarray, list[PhonemeEvent]]:
        """waveform float32 [S] at 16 kHz in [-1, 1], and the phonemes spoken: contiguous events
        from 0 to S / 16000 s, with [char_start, char_end) character offsets into text."""
        pcm, raw = self.synthesize_raw(text, speaker)
        wave = resample_to_16k(pcm) / 32768.0
        np.clip(wave, -1.0, 1.0, out=wave)  # the filter's ringing can overshoot full scale slightly
        return wave.astype(np.float32), phoneme_events(text, raw, len(pcm), len(wave))
