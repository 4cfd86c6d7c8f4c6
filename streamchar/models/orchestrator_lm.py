"""Orchestrator LM: a from-scratch Llama decoder over the StreamChar vocabulary.

The module tree and state_dict keys are exactly Hugging Face ``LlamaForCausalLM``'s, and
``save_pretrained`` writes a directory that transformers and vLLM load as a plain Llama
checkpoint. Training and the CPU fallback run this code; serving runs vLLM on the same files.

Legend: B batch, N new tokens, S cached + new tokens, D width, H query heads, G key/value
heads, Hd head width, F MLP width, P positions, V vocab.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from streamchar.models.vocab import DEFAULT_VOCAB, StreamCharVocab

logger = logging.getLogger(__name__)

STREAMCHAR_FORMAT_VERSION = 1
# The orchestrator token protocol (streamchar/engine/protocol.py) the weights are trained for, saved with
# them: an LM decoding contexts of another protocol gives nonsense, so a mismatch is refused at load.
# 1: frames are <adv_n> unit; 2: frames echo the n bytes they pass between the two; 3: advances end at
# word ends.
PROTOCOL_VERSION = 3


@dataclass(frozen=True)
class LMConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError("rotary embeddings need an even head_dim")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_hf_config(self, vocab: StreamCharVocab, dtype: torch.dtype) -> dict[str, Any]:
        """``config.json`` contents; both rope spellings so transformers 4.x, 5.x and vLLM agree."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "initializer_range": 0.02,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": vocab.bos_id,
            "eos_token_id": vocab.eos_id,
            "pad_token_id": vocab.pad_id,
            "use_cache": True,
            "torch_dtype": str(dtype).removeprefix("torch."),
        }

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> LMConfig:
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"only default rope is implemented, got {rope}")
        if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ValueError("config describes a Llama variant this module does not implement")
        config = cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            max_position_embeddings=hf["max_position_embeddings"],
            rope_theta=float(hf.get("rope_theta") or rope.get("rope_theta", 10_000.0)),
            rms_norm_eps=hf["rms_norm_eps"],
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
        )
        if hf.get("head_dim", config.head_dim) != config.head_dim:
            raise ValueError("head_dim other than hidden_size // num_attention_heads is not implemented")
        return config


PRESETS: dict[str, LMConfig] = {
    # ~2.7M params: CPU tests, smoke training, the no-GPU fallback. B=1 decode on CPU is
    # bound by per-op overhead and weight reads, so the MLP is 2x wide rather than 8/3x.
    "tiny": LMConfig(
        vocab_size=DEFAULT_VOCAB.vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    ),
    # ~0.6B params (vocab is tiny, so nearly all in the blocks); head_dim 128 for vLLM kernels;
    # 8192 positions cover ~2 min of frames at 25 fps with two tokens per frame plus the text and its echo.
    "paper": LMConfig(
        vocab_size=DEFAULT_VOCAB.vocab_size,
        hidden_size=1536,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=8192,
        rope_theta=500_000.0,
    ),
}


class KVCache:
    """Preallocated per-layer keys/values; ``length`` tokens are valid in every layer.

    Buffers are allocated on first use, taking batch size, dtype and device from the keys.
    ``crop(n)`` rolls back to the first ``n`` tokens (rejected speculative frames); start a
    fresh cache to re-prefill a rewritten context.
    """

    def __init__(self, num_layers: int, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self._keys: list[torch.Tensor | None] = [None] * num_layers
        self._values: list[torch.Tensor | None] = [None] * num_layers

    def __len__(self) -> int:
        return self.length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new ``k, v`` [B,G,N,Hd] after ``length`` and return all keys/values [B,G,S,Hd].

        ``length`` itself moves only in ``advance`` once every layer has stored its slice.
        """
        B, G, N, Hd = k.shape
        end = self.length + N
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.capacity}")
        if self._keys[layer] is None:
            self._keys[layer] = k.new_empty(B, G, self.capacity, Hd)
            self._values[layer] = v.new_empty(B, G, self.capacity, Hd)
        keys, values = self._keys[layer], self._values[layer]
        if keys.shape[0] != B:
            raise ValueError(f"cache holds batch {keys.shape[0]}, got batch {B}")
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def crop(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {n}")
        self.length = n


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> [..., D]; statistics in float32 and weight applied last, as HF does."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """HF Llama default rope: frequencies duplicated over both halves, paired by rotate_half."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        Hd = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, Hd, 2, dtype=torch.float32) / Hd))
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]  # [P, Hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, Hd]
        # Tables rather than inv_freq: a bf16 cast of the model then rounds cos/sin exactly as
        # HF does (computed in fp32, cast to activation dtype), never the angles themselves.
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, start: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, Hd] for positions start..start+n-1."""
        return self.cos[start : start + n].to(dtype), self.sin[start : start + n].to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B,H,N,Hd], cos/sin [N,Hd] -> [B,H,N,Hd]."""
    return x * cos + rotate_half(x) * sin


class LlamaAttention(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        D, Hd = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(D, self.n_heads * Hd, bias=False)
        self.k_proj = nn.Linear(D, self.n_kv_heads * Hd, bias=False)
        self.v_proj = nn.Linear(D, self.n_kv_heads * Hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * Hd, D, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        """x [B,N,D] -> [B,N,D]; with a cache, the N tokens follow its ``length`` cached ones."""
        B, N, _ = x.shape
        q = self.q_proj(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)  # [B,H,N,Hd]
        k = self.k_proj(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B,G,N,Hd]
        v = self.v_proj(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B,G,N,Hd]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # [B,G,S,Hd]
        gqa = self.n_heads != self.n_kv_heads
        if N == 1:
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            # SDPA's is_causal aligns the mask top-left; new tokens sit bottom-right of [N,S].
            mask = torch.ones(N, past + N, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, N, self.n_heads * self.head_dim)  # [B,N,H*Hd]
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        D, Fw = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(D, Fw, bias=False)
        self.up_proj = nn.Linear(D, Fw, bias=False)
        self.down_proj = nn.Linear(Fw, D, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,N,D] -> [B,N,D] (SwiGLU)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        """x [B,N,D] -> [B,N,D]."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBackbone(nn.Module):
    """HF's ``LlamaModel``: lives under ``model.`` so parameter names match checkpoints."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """input_ids [B,N] -> final hidden states [B,N,D]."""
        N = input_ids.shape[1]
        start = 0 if cache is None else cache.length
        if start + N > self.rotary_emb.cos.shape[0]:
            raise ValueError(f"positions {start}..{start + N - 1} exceed max_position_embeddings")
        x = self.embed_tokens(input_ids)  # [B,N,D]
        cos, sin = self.rotary_emb(start, N, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)
        if cache is not None:
            cache.advance(N)
        return self.norm(x)


class OrchestratorLM(nn.Module):
    """Llama causal LM. Parameters keep PyTorch's default init until ``init_weights``."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaBackbone(config)
        # Tied models own no lm_head parameter, so the state_dict matches HF's tied layout.
        self.lm_head = (
            None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        # Decoding setting saved with the checkpoint (streamchar.json "decoding"), not a weight: added to
        # the logits of the non-zero advance tokens before the greedy choice (vLLM: ``logit_bias``). A
        # word's onset is a rare, uncertain event; this calibrates the greedy decoder's timing
        # (``python -m training.trainers.lm calibrate`` fits it on the val split).
        self.advance_bias = 0.0

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """input_ids [B,N] -> logits [B,N,V].

        With ``cache`` the tokens are positioned after its ``length`` cached tokens and their
        keys/values are appended to it, so decoding feeds one token [B,1] per call.
        """
        h = self.model(input_ids, cache)  # [B,N,D]
        if self.lm_head is None:
            return F.linear(h, self.model.embed_tokens.weight)
        return self.lm_head(h)

    def new_cache(self, capacity: int | None = None) -> KVCache:
        return KVCache(self.config.num_hidden_layers, capacity or self.config.max_position_embeddings)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def init_weights(self, seed: int) -> OrchestratorLM:
        """HF Llama init (normal std 0.02, norms at 1), reproducible and global-RNG free."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.fill_(1.0)
            else:
                # Sampled on CPU so the same seed gives the same weights on every device.
                p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, 0.02, generator=generator))
        return self

    def save_pretrained(self, directory: str | Path, vocab: StreamCharVocab) -> None:
        """Write an HF Llama checkpoint directory (config, weights, tokenizer) plus streamchar.json."""
        if vocab.vocab_size != self.config.vocab_size:
            raise ValueError(f"vocab has {vocab.vocab_size} tokens, model has {self.config.vocab_size}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        dtype = self.model.embed_tokens.weight.dtype
        _write_json(directory / "config.json", self.config.to_hf_config(vocab, dtype))
        _write_json(
            directory / "generation_config.json",
            {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id, "pad_token_id": vocab.pad_id},
        )
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        vocab.write_hf_tokenizer(directory)
        _write_json(
            directory / "streamchar.json",
            {"format_version": STREAMCHAR_FORMAT_VERSION, "protocol_version": PROTOCOL_VERSION,
             "vocab": vocab.to_dict(), "decoding": {"advance_bias": self.advance_bias}},
        )
        logger.info("saved %s-param orchestrator LM to %s", f"{self.num_params():,}", directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> tuple[OrchestratorLM, StreamCharVocab]:
        """Load a directory written by ``save_pretrained``, in the dtype it was saved in."""
        directory = Path(directory)
        vocab, advance_bias = read_decoding(directory)
        # config.json is what vLLM serves, so it is the source of truth for the architecture.
        config = LMConfig.from_hf_config(json.loads((directory / "config.json").read_text(encoding="utf-8")))
        if config.vocab_size != vocab.vocab_size:
            raise ValueError(f"config.json vocab_size {config.vocab_size} != vocab {vocab.vocab_size}")
        state = load_file(str(directory / "model.safetensors"))
        model = cls(config).to(state["model.embed_tokens.weight"].dtype)
        model.load_state_dict(state, strict=True)
        model.advance_bias = advance_bias
        return model, vocab

    def logit_bias(self, vocab: StreamCharVocab) -> dict[int, float]:
        """Token id -> bias the decoder adds to its logit (the advance tokens that move the pointer)."""
        return advance_logit_bias(vocab, self.advance_bias)


def read_decoding(directory: str | Path) -> tuple[StreamCharVocab, float]:
    """(vocab, advance bias) from a checkpoint's ``streamchar.json``: all a backend that serves the
    weights elsewhere (vLLM) needs of the directory."""
    meta = json.loads((Path(directory) / "streamchar.json").read_text(encoding="utf-8"))
    if meta.get("format_version") != STREAMCHAR_FORMAT_VERSION:
        raise ValueError(f"unsupported streamchar.json format_version {meta.get('format_version')}")
    protocol = meta.get("protocol_version", 1)
    if protocol != PROTOCOL_VERSION:
        raise ValueError(f"{directory}: this orchestrator LM was trained for token protocol {protocol}, this code "
                         f"decodes protocol {PROTOCOL_VERSION}; retrain it (training/trainers/lm.py) or use a "
                         f"matching release")
    return StreamCharVocab.from_dict(meta["vocab"]), float(meta.get("decoding", {}).get("advance_bias", 0.0))


def advance_logit_bias(vocab: StreamCharVocab, advance_bias: float) -> dict[int, float]:
    """The logit bias of an advance bias: added to every advance token that moves the pointer."""
    if not advance_bias:
        return {}
    return {i: advance_bias for i in vocab.adv_ids() if vocab.advance_of(i) > 0}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
