"""The README's main job and the CLI client, run as a user runs them."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from streamchar.localstack import ROOT
from streamchar.localstack import child_env as service_env
from streamchar.media.mux import decode_mp4
from streamchar.models.bundle import default_checkpoint, read_manifest
from streamchar.timebase import TimeBase

TB = TimeBase()


def test_say_writes_an_mp4_pyav_decodes(tmp_path):
    out = tmp_path / "hello.mp4"
    proc = subprocess.run([sys.executable, "-m", "streamchar", "say", "Hello! I am StreamChar, and I say what you type.",
                           "-o", str(out), "-q"], cwd=ROOT, env=service_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    n = int(proc.stdout.split(": ", 1)[1].split(" chunks")[0])
    assert n >= 1
    # The CLI says whether the shipped DiT and LM are trained, as the bundle's manifest records.
    manifest = read_manifest(default_checkpoint())["trained"]
    assert ("UNTRAINED" in proc.stdout) == (not (manifest.get("dit") and manifest.get("orchestrator")))
    frames, audio, info = decode_mp4(out.read_bytes())
    assert info["video_streams"] == 1 and info["audio_streams"] == 1
    assert info["video_frames"] == n * TB.frames_per_chunk
    assert abs(info["video_duration_s"] - n * TB.chunk_seconds) <= 1 / TB.fps
    assert abs(info["audio_duration_s"] - n * TB.chunk_seconds) <= 1 / TB.fps


def test_say_rejects_a_missing_character_image(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "streamchar", "say", "Hi.", "--character", str(tmp_path / "nope.png"),
                           "-o", str(tmp_path / "x.mp4")], cwd=ROOT, env=service_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "cannot read character image" in proc.stderr


@pytest.mark.parametrize("flag, message", [("--video-prior-only", "needs a DiT with a video prior"),
                                           ("--audio-prior-only", "needs a DiT with an audio prior")])
def test_say_refuses_a_prior_only_setting_for_a_dit_without_that_prior(tmp_path, flag, message):
    proc = subprocess.run([sys.executable, "-m", "streamchar", "say", "Hi.", "--dit", "dit", flag,
                           "-o", str(tmp_path / "x.mp4")], cwd=ROOT, env=service_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.mp4").exists()



@pytest.mark.parametrize("flag, value, message", [("--audio-temperature", "5", "audio temperature must be in [0, 2]"),
                                                  ("--steps", "0", "sampler steps must be >= 1"),
                                                  ("--guidance", "-1", "a CFG scale must be in [0, 10]"),
                                                  ("--video-temperature", "3", "video temperature must be in [0, 2]"),
                                                  ("--audio-guidance", "nan", "a CFG scale must be in [0, 10]")])
def test_say_refuses_bad_sampler_settings_before_loading_anything(tmp_path, flag, value, message):
    proc = subprocess.run([sys.executable, "-m", "streamchar", "say", "Hi.", flag, value, "-o", str(tmp_path / "x.mp4")],
                          cwd=ROOT, env=service_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr

def test_samples_renders_held_out_characters_with_their_settings(tmp_path):
    out = tmp_path / "samples"
    proc = subprocess.run([sys.executable, "-m", "streamchar", "samples", "--count", "1", "--out", str(out),
                           "--audio-guidance", "1.5"], cwd=ROOT, env=service_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    videos = sorted(out.glob("sample-0-identity-*.mp4"))
    assert len(videos) == 1 and (out / "contact_sheet.png").stat().st_size > 0
    frames, _, info = decode_mp4(videos[0].read_bytes())
    assert info["video_streams"] == 1 and info["audio_streams"] == 1 and frames.shape[0] % TB.frames_per_chunk == 0
    readme = (out / "README.md").read_text()
    assert "guidance 1 (audio 1.5)" in readme and videos[0].name in readme
    bad = subprocess.run([sys.executable, "-m", "streamchar", "samples", "--audio-guidance", "nan", "--out",
                          str(tmp_path / "x")], cwd=ROOT, env=service_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "a CFG scale must be in [0, 10]" in bad.stderr


@pytest.mark.asyncio
async def test_cli_client_streams_through_a_running_gateway(stack, tmp_path):
    out = tmp_path / "client.mp4"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamchar", "client", "Word by word through the gateway.", "--words",
        "--gateway", stack.gateway, "-o", str(out), "-q", cwd=ROOT, env=service_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    n = int(stdout.decode().split(", ")[1].split(" chunks")[0])
    frames, _, info = decode_mp4(out.read_bytes())
    assert frames.shape[0] == n * TB.frames_per_chunk


@pytest.mark.asyncio
async def test_cli_client_reports_gateway_errors(stack, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamchar", "client", "Hi.", "--character", str(bad), "--gateway", stack.gateway,
        "-o", str(tmp_path / "x.mp4"), "-q", cwd=ROOT, env=service_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2 and "INVALID_ARGUMENT" in stderr.decode()


def test_serve_runs_the_stack_and_stops_on_sigterm(tmp_path, character_png):
    import signal
    import urllib.request

    from streamchar.client import Client
    from streamchar.localstack import free_port

    http = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "streamchar", "serve", "--log-dir", str(tmp_path), "--http", http],
                            cwd=ROOT, env=service_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(7)]
        gateway = next(line.split()[1] for line in lines if line.startswith("gateway"))
        page = next(line.split()[1] for line in lines if line.startswith("page"))
        assert page == f"http://{http}/"
        with Client(gateway) as client:
            result = client.speak("Served locally.", character_png)
        assert result.end is not None and result.chunk_indices == list(range(result.end.chunks))
        with urllib.request.urlopen(page, timeout=10) as response:
            assert response.status == 200 and b"StreamChar" in response.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    for name in ("gateway", "renderer", "orchestrator"):
        assert "shutting down" in (tmp_path / f"{name}.log").read_text(), name
