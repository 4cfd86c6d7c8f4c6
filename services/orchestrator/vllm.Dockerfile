# syntax=docker/dockerfile:1
# The orchestrator's LM server on a GPU: vLLM's OpenAI-compatible server with StreamChar's logits
# processor, serving the shipped bundle's orchestrator/ directory (README: The orchestrator on vLLM).
# The vLLM release is the one `make vllm-env` tests on the CPU (VLLM_SPEC in the Makefile).
# Build from the repository root:
#   docker build -f services/orchestrator/vllm.Dockerfile -t streamchar/vllm:dev .
FROM vllm/vllm-openai:v0.32.0

# The logits processor (services.orchestrator.vllm_constraint) imports streamchar.engine.frames; the
# bundle's orchestrator/ directory is the served model.
COPY streamchar /opt/streamchar/streamchar
COPY services /opt/streamchar/services
# Offline and without usage reports, as the tests start it (streamchar/localstack.py).
ENV PYTHONPATH=/opt/streamchar \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1

RUN groupadd --gid 10001 vllm \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin vllm
USER 10001:10001
WORKDIR /home/vllm

EXPOSE 8000
# Ready once it lists its model (what the orchestrator and `localstack.VLLMServer` wait for).
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/models', timeout=4)"]
# vllm_server_command(python3, <bundle>/orchestrator, 0.0.0.0, 8000, device="cuda", gpu_memory_utilization=0.25)
# (services/orchestrator/vllm_backend.py); tests/test_deploy.py checks that they are equal.
ENTRYPOINT []
CMD ["python3", "-m", "vllm.entrypoints.openai.api_server", \
     "--model", "/opt/streamchar/streamchar/checkpoints/tiny/orchestrator", \
     "--served-model-name", "streamchar-orchestrator", "--host", "0.0.0.0", "--port", "8000", \
     "--logits-processors", "services.orchestrator.vllm_constraint:FrameRunConstraint", \
     "--max-model-len", "1024", "--disable-uvicorn-access-log", "--gpu-memory-utilization", "0.25"]
