"""Orchestrator LM: cache correctness, checkpoint round trips, vocab layout, HF compatibility."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from streamchar.models.orchestrator_lm import PRESETS, PROTOCOL_VERSION, LMConfig, OrchestratorLM
from streamchar.models.vocab import DEFAULT_VOCAB, NUM_BYTES, SPECIAL_TOKENS, StreamCharVocab

TEXT = "Hello, world! Grüße, 世界 🙂\n\tend"


def _model(tie: bool = True, seed: int = 0) -> OrchestratorLM:
    config = dataclasses.replace(PRESETS["tiny"], tie_word_embeddings=tie)
    return OrchestratorLM(config).init_weights(seed).eval()


def _ids(batch: int, n: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, DEFAULT_VOCAB.vocab_size, (batch, n), generator=generator)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def saved(request, tmp_path_factory):
    model = _model(tie=request.param)
    directory = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(directory, DEFAULT_VOCAB)
    return model, directory


# ---- vocab ------------------------------------------------------------------------


def test_vocab_ranges_partition_the_id_space():
    v = DEFAULT_VOCAB
    specials = [v.pad_id, v.bos_id, v.eos_id, v.text_id, v.speak_id, v.wait_id]
    ids = [*range(NUM_BYTES), *specials, *v.adv_ids(), *v.unit_ids()]
    assert sorted(ids) == list(range(v.vocab_size))
    assert len(v.adv_ids()) == v.max_advance + 1
    assert len(v.unit_ids()) == v.num_units
    assert [v.token_str(i) for i in specials] == list(SPECIAL_TOKENS)


def test_vocab_conversions_round_trip():
    v = StreamCharVocab(num_units=7, max_advance=3)
    assert [v.advance_of(v.adv_id(n)) for n in range(4)] == list(range(4))
    assert [v.unit_of(v.unit_id(k)) for k in range(7)] == list(range(7))
    assert all(v.is_adv(i) and not v.is_unit(i) for i in v.adv_ids())
    assert all(v.is_unit(i) and not v.is_adv(i) for i in v.unit_ids())
    assert not v.is_adv(v.wait_id) and not v.is_unit(255)
    assert bytes(v.text_ids(TEXT)).decode("utf-8") == TEXT
    for bad in (lambda: v.adv_id(4), lambda: v.unit_id(7), lambda: v.unit_of(v.adv_id(0)), lambda: v.advance_of(65)):
        with pytest.raises(ValueError):
            bad()


def test_vocab_dict_round_trip_and_layout_guard():
    v = StreamCharVocab(num_units=500, max_advance=9)
    d = json.loads(json.dumps(v.to_dict()))
    assert StreamCharVocab.from_dict(d) == v
    d["unit_range"] = [0, 500]
    with pytest.raises(ValueError):
        StreamCharVocab.from_dict(d)


def test_accents_come_after_every_other_id_and_round_trip():
    plain = StreamCharVocab(num_units=7, max_advance=3)
    v = StreamCharVocab(num_units=7, max_advance=3, accents=("en-us", "en-gb-scotland"))
    # every id of the vocabulary without accents is the same id with them: an LM grows into them
    assert v.vocab_size == plain.vocab_size + 2
    assert (v.adv_ids(), v.unit_ids()) == (plain.adv_ids(), plain.unit_ids())
    assert list(v.accent_ids()) == [plain.vocab_size, plain.vocab_size + 1]
    assert v.token_str(v.accent_id("en-gb-scotland")) == "<accent_en-gb-scotland>"
    assert not any(v.is_unit(i) or v.is_adv(i) for i in v.accent_ids())
    with pytest.raises(ValueError, match="accents: en-us, en-gb-scotland"):
        v.accent_id("fr-fr")
    with pytest.raises(ValueError, match="none"):
        plain.accent_id("en-us")
    for bad in (("en-us", "en-us"), ("",), ("a b",)):
        with pytest.raises(ValueError):
            StreamCharVocab(num_units=7, max_advance=3, accents=bad)
    d = json.loads(json.dumps(v.to_dict()))
    assert StreamCharVocab.from_dict(d) == v and d["accent_range"] == [plain.vocab_size, v.vocab_size]
    assert "accents" not in plain.to_dict()  # checkpoints without accents are written as before


def test_tokenizer_json_has_the_accent_tokens(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    v = StreamCharVocab(num_units=7, max_advance=3, accents=("en-us", "en-029"))
    v.write_hf_tokenizer(tmp_path)
    tok = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.get_vocab_size() == v.vocab_size
    assert tok.encode("<accent_en-029><text>hi", add_special_tokens=False).ids == [
        v.accent_id("en-029"), v.text_id, *v.text_ids("hi")]


def test_presets_match_default_vocab():
    assert all(config.vocab_size == DEFAULT_VOCAB.vocab_size for config in PRESETS.values())
    with torch.device("meta"):
        paper = OrchestratorLM(PRESETS["paper"])
    assert 0.5e9 <= paper.num_params() <= 1e9


def test_tokenizer_json_decodes_bytes(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    v = DEFAULT_VOCAB
    v.write_hf_tokenizer(tmp_path)
    tok = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.get_vocab_size() == v.vocab_size
    assert tok.decode(v.text_ids(TEXT)) == TEXT
    assert tok.encode(TEXT, add_special_tokens=False).ids == v.text_ids(TEXT)
    assert tok.encode(TEXT).ids == [v.bos_id, *v.text_ids(TEXT)]
    for i in range(NUM_BYTES, v.vocab_size):
        assert tok.token_to_id(v.token_str(i)) == i
    frame = [v.speak_id, v.adv_id(2), v.unit_id(17), v.wait_id]
    assert tok.decode(frame, skip_special_tokens=False) == "<speak><adv_2><unit_17><wait>"
    assert tok.encode("<text>hi<speak><unit_17>", add_special_tokens=False).ids == [
        v.text_id, *v.text_ids("hi"), v.speak_id, v.unit_id(17)
    ]


# ---- model ------------------------------------------------------------------------


def test_state_dict_keys_are_hf_llama():
    layer_keys = [
        *(f"self_attn.{p}_proj.weight" for p in "qkvo"),
        *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
    ]
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    expected |= {f"model.layers.{i}.{k}" for i in range(PRESETS["tiny"].num_hidden_layers) for k in layer_keys}
    assert set(_model(tie=True).state_dict()) == expected
    assert set(_model(tie=False).state_dict()) == expected | {"lm_head.weight"}


def test_init_weights_is_deterministic():
    a, b, c = _model(seed=3), _model(seed=3), _model(seed=4)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
        if "norm" in name:
            assert torch.all(pa == 1), name
        else:
            assert not torch.equal(pa, pc), name
    assert abs(a.model.embed_tokens.weight.std().item() - 0.02) < 1e-3


@torch.no_grad()
def test_kv_cache_decode_matches_full_forward():
    model = _model()
    ids = _ids(2, 24)
    full = model(ids)
    cache = model.new_cache()
    # Prefill, single-token steps, then a multi-token chunk on top of a non-empty cache.
    parts = [model(ids[:, :9], cache)]
    parts += [model(ids[:, i : i + 1], cache) for i in range(9, 17)]
    parts.append(model(ids[:, 17:], cache))
    assert len(cache) == 24
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cache_crop_and_fresh_prefill():
    model = _model()
    ids, other = _ids(1, 20, seed=1), _ids(1, 20, seed=2)
    cache = model.new_cache()
    model(ids, cache)
    cache.crop(12)
    branched = torch.cat([ids[:, :12], other[:, 12:]], dim=1)
    tail = torch.cat([model(other[:, i : i + 1], cache) for i in range(12, 20)], dim=1)
    torch.testing.assert_close(tail, model(branched)[:, 12:], atol=1e-5, rtol=1e-5)
    fresh = model.new_cache()
    torch.testing.assert_close(model(branched, fresh), model(branched), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError):
        cache.crop(21)


@torch.no_grad()
def test_cache_and_position_limits():
    model = _model()
    small = model.new_cache(capacity=8)
    model(_ids(1, 8), small)
    with pytest.raises(ValueError):
        model(_ids(1, 1), small)
    with pytest.raises(ValueError):
        model(_ids(1, PRESETS["tiny"].max_position_embeddings + 1))
    # A rejected step leaves the cache usable.
    small.crop(7)
    model(_ids(1, 1), small)
    assert len(small) == 8


@torch.no_grad()
def test_batch_rows_are_independent():
    model = _model()
    ids = _ids(3, 16)
    batched_cache = model.new_cache()
    batched = torch.cat([model(ids[:, :10], batched_cache), model(ids[:, 10:], batched_cache)], dim=1)
    for b in range(3):
        torch.testing.assert_close(batched[b : b + 1], model(ids[b : b + 1]), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_save_load_round_trip(saved):
    model, directory = saved
    loaded, vocab = OrchestratorLM.from_pretrained(directory)
    assert vocab == DEFAULT_VOCAB
    assert loaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    ids = _ids(2, 12)
    assert torch.equal(loaded.eval()(ids), model(ids))
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        vocab.bos_id,
        vocab.eos_id,
        vocab.pad_id,
    )
    assert LMConfig.from_hf_config(config) == model.config


def test_an_lm_trained_for_another_token_protocol_is_refused(tmp_path):
    """Weights trained on other contexts (protocol 1 had no echo) would decode nonsense: say so at load."""
    _model().save_pretrained(tmp_path, DEFAULT_VOCAB)
    meta = json.loads((tmp_path / "streamchar.json").read_text())
    assert meta["protocol_version"] == PROTOCOL_VERSION
    for old in ({**meta, "protocol_version": 1}, {k: v for k, v in meta.items() if k != "protocol_version"}):
        (tmp_path / "streamchar.json").write_text(json.dumps(old))
        with pytest.raises(ValueError, match="trained for token protocol 1"):
            OrchestratorLM.from_pretrained(tmp_path)


@torch.no_grad()
def test_save_load_keeps_bf16(tmp_path):
    model = _model().to(torch.bfloat16)
    model.save_pretrained(tmp_path, DEFAULT_VOCAB)
    loaded, _ = OrchestratorLM.from_pretrained(tmp_path)
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ids = _ids(1, 8)
    assert torch.equal(loaded.eval()(ids), model(ids))


@torch.no_grad()
def test_advance_bias_is_saved_and_steers_the_greedy_choice(tmp_path):
    """The decoding setting travels in streamchar.json and the embedded backend applies it as a logit bias
    on exactly the advance tokens that move the pointer."""
    from streamchar.engine.orchestration import EmbeddedLMBackend

    model = _model().eval()
    assert model.logit_bias(DEFAULT_VOCAB) == {}
    model.advance_bias = 2.5
    model.save_pretrained(tmp_path, DEFAULT_VOCAB)
    loaded, vocab = OrchestratorLM.from_pretrained(tmp_path)
    bias = loaded.logit_bias(vocab)
    assert loaded.advance_bias == 2.5 and set(bias.values()) == {2.5}
    assert sorted(bias) == [i for i in vocab.adv_ids() if vocab.advance_of(i) > 0]
    context, allowed = [vocab.bos_id, vocab.text_id, 65, 66, vocab.speak_id], list(vocab.adv_ids())
    logits = loaded(torch.tensor([context]))[0, -1]
    plain = EmbeddedLMBackend(loaded).step("s", context, allowed)
    assert plain == allowed[int(torch.argmax(logits[allowed]))]
    zero = vocab.adv_ids()[0]
    biased = EmbeddedLMBackend(loaded, logit_bias={zero: -1e4, **bias}).step("s", context, allowed)
    assert biased != zero and biased == max(bias, key=lambda i: float(logits[i]))


def test_save_rejects_mismatched_vocab(tmp_path):
    with pytest.raises(ValueError):
        _model().save_pretrained(tmp_path, StreamCharVocab(num_units=10, max_advance=3))


# ---- Hugging Face compatibility -----------------------------------------------------


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        pytest.skip(f"transformers not importable ({exc}); HF compatibility unchecked")
    return transformers


@torch.no_grad()
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_transformers_llama_loads_checkpoint_with_equal_logits(saved, attn_implementation):
    transformers = _transformers()
    model, directory = saved
    hf, info = transformers.LlamaForCausalLM.from_pretrained(
        directory, output_loading_info=True, attn_implementation=attn_implementation
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = _ids(2, 48)
    torch.testing.assert_close(hf.eval()(ids).logits, model(ids), atol=1e-4, rtol=1e-4)


def test_transformers_autotokenizer_loads(saved):
    transformers = _transformers()
    _, directory = saved
    v = DEFAULT_VOCAB
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    assert len(tok) == v.vocab_size
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (v.bos_id, v.eos_id, v.pad_id)
    assert tok.decode(v.text_ids(TEXT)) == TEXT
    assert tok(TEXT).input_ids == [v.bos_id, *v.text_ids(TEXT)]
    assert tok.convert_ids_to_tokens([v.unit_id(5), v.adv_id(1)]) == ["<unit_5>", "<adv_1>"]


def test_the_orchestrator_service_can_override_the_checkpoints_advance_bias():
    """OrchestratorConfig.advance_bias (STREAMCHAR_ADVANCE_BIAS) replaces the shipped checkpoint's decoding
    bias on the advance tokens; unset, the checkpoint's own applies."""
    from services.orchestrator.server import OrchestratorConfig, build_engine
    from streamchar.state.store import MemorySessionStore
    from streamchar.timebase import TimeBase

    own, _ = build_engine(OrchestratorConfig(), MemorySessionStore(), TimeBase())
    assert set(own.backend._bias.tolist()) == {own.backend.model.advance_bias} != {0.0}
    other, _ = build_engine(OrchestratorConfig(advance_bias=0.25), MemorySessionStore(), TimeBase())
    assert set(other.backend._bias.tolist()) == {0.25}
    assert own.backend._bias_ids.tolist() == other.backend._bias_ids.tolist()
    with pytest.raises(ValueError, match="advance_bias"):
        OrchestratorConfig(advance_bias=50.0)
