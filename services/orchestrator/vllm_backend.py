"""The orchestrator's LM on a vLLM server, through its OpenAI-compatible ``/v1/completions``.

vLLM serves the very checkpoint directory the embedded backend loads (an HF Llama directory), and
decodes with the same constraint: each frame run of the protocol is one streamed completion,

- the prompt is the context as token ids; generated ids come back as they are decoded
  (``return_token_ids``), greedy (``temperature`` 0), with the checkpoint's logit bias;
- ``vllm_xargs.streamchar_run`` hands the run to the ``FrameRunConstraint`` logits processor
  (vllm_constraint.py), which keeps only the ids the protocol allows at each step and ends the
  request with ``<eos>`` where the run ends;
- cancelling `decode` (the session went away, or was interrupted) closes the HTTP stream, and
  vLLM aborts a request whose client disconnected: its server stops generating for it.

Requests of all sessions go out concurrently; vLLM batches them. A server that is down, dies or
stalls mid-run raises Unavailable, and the engine commits nothing for that chunk, so the session
can be retried once vLLM is back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from streamchar.engine.frames import VLLM_ARG
from streamchar.engine.protocol import DecodeRequest
from streamchar.errors import BackendFailed, Unavailable

CONSTRAINT = "services.orchestrator.vllm_constraint:FrameRunConstraint"


@dataclass(frozen=True)
class VLLMConfig:
    url: str = "http://127.0.0.1:8000"
    # Served model name; "" takes the one model the server lists at /v1/models.
    model: str = ""
    connect_timeout_seconds: float = 2.0
    # Longest wait for the next streamed token before the server counts as stalled.
    read_timeout_seconds: float = 30.0
    # How often the orchestrator checks that vLLM answers (its gRPC health follows).
    health_interval_seconds: float = 2.0


class VLLMBackend:
    def __init__(self, config: VLLMConfig, logit_bias: dict[int, float]) -> None:
        self.config = config
        self._logit_bias = {str(k): v for k, v in sorted(logit_bias.items())}
        self._model = config.model
        self._client = httpx.AsyncClient(
            base_url=config.url.rstrip("/"),
            timeout=httpx.Timeout(config.read_timeout_seconds, connect=config.connect_timeout_seconds),
            # One connection per concurrent run; closing one aborts that request only.
            limits=httpx.Limits(max_keepalive_connections=64, max_connections=None))

    def _unavailable(self, what: str) -> Unavailable:
        return Unavailable(f"vLLM server at {self.config.url} unavailable: {what}")

    async def served_model(self) -> str:
        if self._model:
            return self._model
        try:
            response = await self._client.get("/v1/models")
            response.raise_for_status()
            models = [m["id"] for m in response.json()["data"]]
        except httpx.HTTPError as e:
            raise self._unavailable(f"listing models: {e!r}") from None
        if len(models) != 1:
            raise BackendFailed(f"vLLM server at {self.config.url} serves {models}; set the model to serve")
        self._model = models[0]
        return self._model

    async def reachable(self) -> bool:
        """vLLM answers its health endpoint."""
        try:
            return (await self._client.get("/health", timeout=self.config.connect_timeout_seconds)).status_code == 200
        except httpx.HTTPError:
            return False

    async def decode(self, session_id: str, request: DecodeRequest) -> list[int]:
        run = request.run
        body = {
            "model": await self.served_model(), "prompt": request.context, "max_tokens": run.max_tokens(),
            "temperature": 0.0, "stream": True, "return_token_ids": True, "logit_bias": self._logit_bias,
            "vllm_xargs": {VLLM_ARG: run.to_args()}, "skip_special_tokens": False,
        }
        tokens: list[int] = []
        try:
            async with self._client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:500]
                    if response.status_code >= 500:
                        raise self._unavailable(f"HTTP {response.status_code}: {detail}")
                    raise BackendFailed(f"vLLM server at {self.config.url} refused a run "
                                        f"(HTTP {response.status_code}): {detail}")
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[len("data: "):])
                    if "error" in event:
                        raise self._unavailable(f"error during generation: {event['error']}")
                    for choice in event["choices"]:
                        tokens += choice.get("token_ids") or []
        except httpx.HTTPError as e:
            raise self._unavailable(f"{type(e).__name__}: {e}") from None
        if tokens and tokens[-1] == run.eos_id:
            tokens.pop()
        return tokens

    def forget(self, session_id: str) -> None:
        """Nothing per session here: vLLM's prefix cache keys on the tokens themselves."""

    async def close(self) -> None:
        await self._client.aclose()


def vllm_server_command(python: str | Path, model_dir: str | Path, host: str, port: int,
                        device: str = "cpu", gpu_memory_utilization: float = 0.3,
                        served_model_name: str = "streamchar-orchestrator") -> list[str]:
    """The one command that starts vLLM for the orchestrator (tests, benchmark, containers).

    `python` is the vLLM environment's interpreter; the repository must be on its PYTHONPATH for
    the logits processor. On CPU, fp32 and eager mode (greedy ids then match the embedded backend's)
    with a small KV cache; on a GPU shared with the renderer, vLLM takes `gpu_memory_utilization`
    of the device's memory (README: co-locating vLLM and the renderer).
    """
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", served_model_name, "--host", host, "--port", str(port),
               "--logits-processors", CONSTRAINT, "--max-model-len", str(_max_positions(model_dir)),
               "--disable-uvicorn-access-log"]
    if device == "cpu":
        command += ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", "256M"]
    else:
        command += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return command


def _max_positions(model_dir: str | Path) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))["max_position_embeddings"])


def vllm_python(venv: str | Path | None = None) -> Path:
    """The vLLM environment's interpreter: `venv`, or the repository's .venv-vllm (``make vllm-env``)."""
    return Path(venv or Path(__file__).resolve().parents[2] / ".venv-vllm") / "bin" / "python"
