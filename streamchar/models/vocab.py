"""Token id layout shared by the orchestrator LM, its training data and the vLLM server.

One flat id space, in this order::

    0 .. 255                      UTF-8 byte tokens (transcript text)
    <pad> <bos> <eos>             sequence control
    <text>                        starts a text segment
    <speak>                       starts a unit segment
    <wait>                        a silence / fill frame
    <adv_0> .. <adv_{A}>          transcript BYTES the speech pointer advances in one frame
    <unit_0> .. <unit_{K-1}>      discrete speech units, one per video frame
    <accent_NAME> ...             the accents the LM speaks (may be none), one after <bos>

Bytes keep the vocabulary language-agnostic and make the progress pointer exact: an
``<adv_n>`` moves it by ``n`` entries of ``text_ids(transcript)``.

Accents come last, so a vocabulary with accents keeps every id of the same one without: an LM gains
them by growing its embedding tables (training/trainers/runtime.py, ``warm_start``). An accent names
how the transcript is pronounced (the corpus's voices: ``en-us``, ``en-gb-scotland``, ...): for
phoneme units the same text is a different unit sequence in each, so an LM not told which can only
guess (docs/eval/teacher/orchestrator.md, "Accents").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NUM_BYTES = 256
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<text>", "<speak>", "<wait>")


@dataclass(frozen=True)
class StreamCharVocab:
    num_units: int
    max_advance: int
    accents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.num_units < 1:
            raise ValueError(f"num_units must be >= 1, got {self.num_units}")
        if self.max_advance < 0:
            raise ValueError(f"max_advance must be >= 0, got {self.max_advance}")
        object.__setattr__(self, "accents", tuple(self.accents))
        if len(set(self.accents)) != len(self.accents):
            raise ValueError(f"duplicate accents in {self.accents}")
        for name in self.accents:
            if not name or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
                raise ValueError(f"accent {name!r} must be a non-empty name of ASCII letters, digits, '-' and '_'")

    # ---- layout -------------------------------------------------------------------

    @property
    def _adv_start(self) -> int:
        return NUM_BYTES + len(SPECIAL_TOKENS)

    @property
    def _unit_start(self) -> int:
        return self._adv_start + self.max_advance + 1

    @property
    def _accent_start(self) -> int:
        return self._unit_start + self.num_units

    @property
    def vocab_size(self) -> int:
        return self._accent_start + len(self.accents)

    @property
    def pad_id(self) -> int:
        return NUM_BYTES + SPECIAL_TOKENS.index("<pad>")

    @property
    def bos_id(self) -> int:
        return NUM_BYTES + SPECIAL_TOKENS.index("<bos>")

    @property
    def eos_id(self) -> int:
        return NUM_BYTES + SPECIAL_TOKENS.index("<eos>")

    @property
    def text_id(self) -> int:
        return NUM_BYTES + SPECIAL_TOKENS.index("<text>")

    @property
    def speak_id(self) -> int:
        return NUM_BYTES + SPECIAL_TOKENS.index("<speak>")

    @property
    def wait_id(self) -> int:
        return NUM_BYTES + SPECIAL_TOKENS.index("<wait>")

    def adv_ids(self) -> range:
        return range(self._adv_start, self._unit_start)

    def unit_ids(self) -> range:
        return range(self._unit_start, self._accent_start)

    def accent_ids(self) -> range:
        return range(self._accent_start, self.vocab_size)

    # ---- conversions --------------------------------------------------------------

    def adv_id(self, n: int) -> int:
        if not 0 <= n <= self.max_advance:
            raise ValueError(f"advance {n} outside 0..{self.max_advance}")
        return self._adv_start + n

    def advance_of(self, token_id: int) -> int:
        if not self.is_adv(token_id):
            raise ValueError(f"token {token_id} is not an advance token")
        return token_id - self._adv_start

    def unit_id(self, k: int) -> int:
        if not 0 <= k < self.num_units:
            raise ValueError(f"unit {k} outside 0..{self.num_units - 1}")
        return self._unit_start + k

    def unit_of(self, token_id: int) -> int:
        if not self.is_unit(token_id):
            raise ValueError(f"token {token_id} is not a unit token")
        return token_id - self._unit_start

    def accent_id(self, name: str) -> int:
        """The token of accent `name`; ValueError (naming the accents this vocabulary has) if it has none such."""
        try:
            return self._accent_start + self.accents.index(name)
        except ValueError:
            known = ", ".join(self.accents) if self.accents else "none: this LM speaks one default accent"
            raise ValueError(f"unknown accent {name!r} (this orchestrator LM's accents: {known})") from None

    def is_adv(self, token_id: int) -> bool:
        return token_id in self.adv_ids()

    def is_unit(self, token_id: int) -> bool:
        return token_id in self.unit_ids()

    def text_ids(self, s: str) -> list[int]:
        return list(s.encode("utf-8"))

    def token_str(self, token_id: int) -> str:
        """Printable name of a non-byte token (``<adv_3>``, ``<unit_17>``, ``<bos>``...)."""
        if NUM_BYTES <= token_id < self._adv_start:
            return SPECIAL_TOKENS[token_id - NUM_BYTES]
        if self.is_adv(token_id):
            return f"<adv_{self.advance_of(token_id)}>"
        if self.is_unit(token_id):
            return f"<unit_{self.unit_of(token_id)}>"
        if token_id in self.accent_ids():
            return f"<accent_{self.accents[token_id - self._accent_start]}>"
        raise ValueError(f"token {token_id} is a byte or out of range (vocab_size {self.vocab_size})")

    # ---- persistence --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The defining fields plus the derived layout, for consumers without this code. A vocabulary
        without accents writes neither ``accents`` nor ``accent_range``, as before they existed."""
        d: dict[str, Any] = {
            "num_units": self.num_units,
            "max_advance": self.max_advance,
            "vocab_size": self.vocab_size,
            "special_ids": {name: NUM_BYTES + i for i, name in enumerate(SPECIAL_TOKENS)},
            "adv_range": [self.adv_ids().start, self.adv_ids().stop],
            "unit_range": [self.unit_ids().start, self.unit_ids().stop],
        }
        if self.accents:
            d["accents"] = list(self.accents)
            d["accent_range"] = [self.accent_ids().start, self.accent_ids().stop]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamCharVocab:
        vocab = cls(num_units=int(d["num_units"]), max_advance=int(d["max_advance"]),
                    accents=tuple(str(a) for a in d.get("accents", ())))
        # A checkpoint written under another layout would silently remap every token.
        stored = {k: d[k] for k in vocab.to_dict() if k in d}
        expected = {k: vocab.to_dict()[k] for k in stored}
        if stored != expected:
            raise ValueError(f"stored vocab layout {stored} differs from this code's {expected}")
        return vocab

    def write_hf_tokenizer(self, directory: str | Path) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

        Byte-level BPE with no merges: every byte is exactly one token whose id is the byte
        value, so HF decoding of byte ids reproduces the UTF-8 text. All non-byte tokens are
        added special tokens (matched verbatim in prompt text, dropped by
        ``skip_special_tokens``). Encoding prepends ``<bos>``, as in Llama checkpoints.
        """
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        byte_char = _bytes_to_unicode()
        tokenizer = Tokenizer(models.BPE(vocab={byte_char[b]: b for b in range(NUM_BYTES)}, merges=[]))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tokenizer.decoder = decoders.ByteLevel()
        names = [self.token_str(i) for i in range(NUM_BYTES, self.vocab_size)]
        tokenizer.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
        bos = self.token_str(self.bos_id)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, self.bos_id)]
        )
        if tokenizer.get_vocab_size() != self.vocab_size or tokenizer.token_to_id(names[-1]) != self.vocab_size - 1:
            raise RuntimeError("tokenizers assigned ids that differ from the StreamChar layout")
        tokenizer.save(str(directory / "tokenizer.json"))

        special_map = {
            "bos_token": bos,
            "eos_token": self.token_str(self.eos_id),
            "pad_token": self.token_str(self.pad_id),
            # Listing them keeps transformers' all_special_ids in line with tokenizer.json.
            "additional_special_tokens": [n for n in names if n not in SPECIAL_TOKENS[:3]],
        }
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special_map,
            "unk_token": None,
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        }
        _write_json(directory / "special_tokens_map.json", special_map)
        _write_json(directory / "tokenizer_config.json", tokenizer_config)


DEFAULT_VOCAB = StreamCharVocab(num_units=1024, max_advance=15)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-character table, the alphabet of tokenizers' ByteLevel."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = [b for b in range(NUM_BYTES) if b not in table]
    for i, b in enumerate(shifted):
        table[b] = chr(NUM_BYTES + i)
    return table


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
