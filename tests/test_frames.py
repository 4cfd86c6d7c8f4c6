"""Frame runs: the constraint shared by the protocol, the embedded backend and vLLM's logits processor."""

from __future__ import annotations

import numpy as np
import pytest

from services.orchestrator.vllm_backend import CONSTRAINT, vllm_server_command
from streamchar.engine.frames import FrameDecoder, FrameRun, advance_options, is_word_byte
from streamchar.engine.orchestration import OrchestratorEngine
from streamchar.engine.protocol import DecodeRequest, OrchestratorProtocol, ProtocolConfig
from streamchar.errors import BackendFailed
from streamchar.models.bundle import load_orchestrator_decoding
from streamchar.models.vocab import StreamCharVocab
from streamchar.session import SessionMeta
from streamchar.state.store import MemorySessionStore

VOCAB = StreamCharVocab(num_units=16, max_advance=4)


def run(**overrides) -> FrameRun:
    v = VOCAB
    fields = dict(frames=8, text=b"0123456789", refill_below=0, stall=0, max_stall=3, max_advance=v.max_advance,
                  adv_zero=v.adv_id(0), unit_first=v.unit_ids().start, unit_end=v.unit_ids().stop,
                  wait_id=v.wait_id, eos_id=v.eos_id)
    return FrameRun(**{**fields, **overrides})


def frame(decoder: FrameDecoder, advance: int, unit: int = 0) -> None:
    decoder.feed(VOCAB.adv_id(advance))
    while decoder.forced:
        decoder.feed(decoder.allowed()[0])
    decoder.feed(VOCAB.unit_id(unit))


def test_run_travels_as_flat_ints_and_bad_args_are_refused():
    r = run(stall=2, refill_below=5)
    assert FrameRun.from_args(r.to_args()) == r
    assert all(type(a) is int for a in r.to_args())
    head = r.to_args()[:-len(r.text)]  # the format and the int fields
    assert r.to_args()[len(head):] == list(r.text)
    for bad in (head, [*r.to_args()[:-1], "x"], [99, *r.to_args()[1:]], "1,2,3", None):
        with pytest.raises(ValueError):
            FrameRun.from_args(bad)
    with pytest.raises(ValueError, match="text to speak"):
        run(text=b"")
    with pytest.raises(ValueError, match="bytes 0..255"):
        FrameRun.from_args([*r.to_args(), 256])
    assert FrameRun.from_args(run(text="héllo".encode()).to_args()).text == "héllo".encode()
    with pytest.raises(ValueError, match="control token"):
        run(wait_id=VOCAB.adv_id(1))
    with pytest.raises(ValueError, match=">= 256"):
        run(adv_zero=-3)
    with pytest.raises(ValueError, match=">= 256"):
        run(wait_id=65)  # a byte


def test_decoder_caps_advances_and_forbids_stalling_past_max_stall():
    d = FrameDecoder(run(text=b"a b", stall=2, max_stall=3))
    assert d.allowed() == [VOCAB.adv_id(n) for n in (0, 1, 3)]  # the word ends within the 3 bytes left
    frame(d, 0)
    assert d.stall == 3 and VOCAB.adv_id(0) not in d.allowed()  # must move now
    with pytest.raises(ValueError, match="breaks the frame run"):
        d.feed(VOCAB.adv_id(0))
    assert d.allowed() == [VOCAB.adv_id(1), VOCAB.adv_id(3)]
    d.feed(VOCAB.adv_id(1))
    d.feed(ord("a"))  # the echo
    assert d.allowed() == [*VOCAB.unit_ids(), VOCAB.wait_id]
    with pytest.raises(ValueError):
        d.feed(VOCAB.adv_id(1))  # a unit is due


def test_advances_end_at_word_ends_or_at_the_reach():
    assert advance_options(b"hi there", 0, 4) == [0, 2]  # "hi", never "h" or "hi t"
    assert advance_options(b" there you", 0, 8) == [0, 6]  # the space before a word goes with it
    assert advance_options(b"extraordinary", 0, 4) == [0, 4]  # no word ends in reach: cut at the reach
    assert advance_options(b", ", 1, 4) == [2]  # only punctuation left: all of it
    assert advance_options("n\u00e9 ici".encode(), 0, 8) == [0, 3, 7]  # the two bytes of \u00e9 are word bytes
    assert advance_options(b"don't", 0, 8) == [0, 3, 5]
    assert advance_options(b"ab", 1, 8) == [2]  # stalled: the end of the text in context is a word end
    assert all(is_word_byte(b) for b in b"aZ09\xc3\xa9") and not any(is_word_byte(b) for b in b" ,.'-\n")


def test_each_advance_echoes_the_bytes_it_passes_and_the_lm_never_chooses_them():
    d = FrameDecoder(run(text=b"hi there"))
    with pytest.raises(ValueError, match="breaks the frame run"):
        d.feed(VOCAB.adv_id(3))  # "hi t" stops inside a word
    d.feed(VOCAB.adv_id(2))
    assert d.forced and d.allowed() == [ord("h")]
    with pytest.raises(ValueError, match="breaks the frame run"):
        d.feed(ord("x"))  # not the transcript's byte
    d.feed(ord("h"))
    assert d.allowed() == [ord("i")]
    with pytest.raises(ValueError):
        d.feed(VOCAB.unit_id(0))  # the echo is not finished
    d.feed(ord("i"))
    assert not d.forced and d.allowed() == [*VOCAB.unit_ids(), VOCAB.wait_id]
    d.feed(VOCAB.unit_id(5))
    frame(d, 0, 6)
    frame(d, 4, 7)  # " there" is beyond the reach of 4: cut there
    assert d.remaining == 2 and d.frames == 3
    assert d.frame_tokens == [[VOCAB.adv_id(2), *b"hi", VOCAB.unit_id(5)], [VOCAB.adv_id(0), VOCAB.unit_id(6)],
                              [VOCAB.adv_id(4), *b" the", VOCAB.unit_id(7)]]
    assert d.tokens == [t for f in d.frame_tokens for t in f]
    assert len(d.tokens) <= run(text=b"hi there", frames=3).max_tokens()


@pytest.mark.parametrize(("overrides", "frames"), [
    ({"text": b"a b c d e f", "frames": 3}, 3),  # the chunk (or the context's room) ends
    ({"text": b"ab cd e"}, 3),  # nothing left to speak: 2 + 3 + 2 bytes
    ({"text": b"ab cd efghi", "refill_below": 7}, 2),  # 11 - 5 = 6 < 7 after two frames: text to insert
])
def test_decoder_ends_the_run_where_the_protocol_must_act(overrides, frames):
    d = FrameDecoder(run(**overrides))
    while not d.done:  # a word per frame
        frame(d, min(a - VOCAB.adv_id(0) for a in d.allowed() if a != VOCAB.adv_id(0)))
    assert d.done and d.frames == frames and d.allowed() == []
    assert len(d.tokens) == 2 * frames + (d.run.remaining - d.remaining) <= d.run.max_tokens()


class BrokenServer:
    """Test double of a misconfigured vLLM (started without the logits processor): it returns an
    unconstrained token. A real vLLM always honours the constraint, so this is the only way to get one."""

    async def decode(self, session_id: str, request: DecodeRequest) -> list[int]:
        return [VOCAB.unit_id(0), VOCAB.unit_id(0)]

    def forget(self, session_id: str) -> None: ...

    async def close(self) -> None: ...


@pytest.mark.asyncio
async def test_a_backend_breaking_the_run_is_a_readable_error_and_nothing_is_committed():
    store = MemorySessionStore()
    engine = OrchestratorEngine(store, BrokenServer(), VOCAB, OrchestratorProtocol(VOCAB, 8, ProtocolConfig()))
    meta = SessionMeta.new(np.zeros((8, 8, 3), np.uint8))
    await meta.create(store)
    await engine.append_text(meta.session_id, "hello", 0)
    with pytest.raises(BackendFailed, match="broke the decoding protocol"):
        await engine.try_next(meta.session_id, 0, allow_fill=False)
    assert (await engine.load(meta.session_id)).next_chunk == 0


def test_vllm_is_started_with_the_constraint_and_the_checkpoint_context_length():
    lm_dir = load_orchestrator_decoding()[0]
    cpu = vllm_server_command("python", lm_dir, "127.0.0.1", 8000)
    gpu = vllm_server_command("python", lm_dir, "0.0.0.0", 8000, device="cuda", gpu_memory_utilization=0.25)
    for command in (cpu, gpu):
        assert command[command.index("--logits-processors") + 1] == CONSTRAINT
        assert command[command.index("--max-model-len") + 1] == "1024"
    assert "--enforce-eager" in cpu and cpu[cpu.index("--dtype") + 1] == "float32"
    assert gpu[gpu.index("--gpu-memory-utilization") + 1] == "0.25" and "--enforce-eager" not in gpu
