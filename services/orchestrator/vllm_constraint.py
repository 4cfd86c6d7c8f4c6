"""The StreamChar decoding constraint as a vLLM logits processor; runs inside the vLLM server.

Start vLLM with ``--logits-processors services.orchestrator.vllm_constraint:FrameRunConstraint``
and the repository on its PYTHONPATH (``vllm_server_command`` in vllm_backend.py builds that
command). A request carrying ``vllm_xargs: {"streamchar_run": FrameRun.to_args()}`` then decodes
exactly the orchestrator protocol's frame run: at every step only the ids that
``streamchar.engine.frames.FrameDecoder`` allows keep their logits, and once the run is over only
``<eos>`` does, so the request ends where the protocol must act. Requests without the argument
are left alone.

The decoder is replayed from the request's output ids at every step (at most two per frame of
one chunk), so the processor holds no state that preemption or a batch reshuffle could corrupt.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from streamchar.engine.frames import VLLM_ARG, FrameDecoder, FrameRun


class FrameRunConstraint(AdapterLogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        args = (sampling_params.extra_args or {}).get(VLLM_ARG)
        if args is not None:
            FrameRun.from_args(args)  # a ValueError here is the client's HTTP 400

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams):
        args = (params.extra_args or {}).get(VLLM_ARG)
        if args is None:
            return None
        run = FrameRun.from_args(args)

        def constrain(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            """logits [V] of the next token after `output_ids` -> the same with disallowed ids at -inf."""
            try:
                allowed = FrameDecoder.replay(run, list(output_ids)).allowed() or [run.eos_id]
            except ValueError:
                # Cannot happen while this processor masks every step; ending the request lets the
                # client report the broken run instead of an exception stopping vLLM's engine.
                allowed = [run.eos_id]
            allowed = [i for i in allowed if i < logits.shape[-1]]
            if not allowed:
                # A run for another vocabulary (the orchestrator's checkpoint is not the one served):
                # unconstrained tokens break the run, and the client says so; vLLM keeps serving.
                return logits
            index = torch.tensor(allowed, dtype=torch.long, device=logits.device)
            masked = torch.full_like(logits, float("-inf"))
            masked[index] = logits[index]
            return masked

        return constrain
