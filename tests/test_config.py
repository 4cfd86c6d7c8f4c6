"""Configuration: defaults < TOML file < environment < overrides; mistakes are errors."""

from __future__ import annotations

import re

import pytest

from services.orchestrator.server import OrchestratorConfig
from services.renderer.server import RendererConfig
from streamchar.config import ConfigError, load_config


def test_file_then_environment_override_defaults(tmp_path):
    path = tmp_path / "renderer.toml"
    path.write_text('steps = 8\nstore_url = "redis://file:6379/0"\nwindow = 3\n')
    config = load_config(RendererConfig, path, env={"STREAMCHAR_STEPS": "2", "UNRELATED": "x"})
    assert config.steps == 2  # environment beats the file
    assert config.store_url == "redis://file:6379/0" and config.window == 3  # file beats defaults
    assert config.guidance == RendererConfig().guidance


def test_nested_sections_from_file_and_env(tmp_path):
    path = tmp_path / "orchestrator.toml"
    path.write_text("[protocol]\nlookahead_bytes = 40\n")
    config = load_config(OrchestratorConfig, path, env={"STREAMCHAR_PROTOCOL__MAX_STALL_FRAMES": "5"})
    assert config.protocol.lookahead_bytes == 40 and config.protocol.max_stall_frames == 5


@pytest.mark.parametrize("content,env,message", [
    ("stepz = 4\n", {}, "unknown key(s) stepz"),
    ("", {"STREAMCHAR_STEPS": "many"}, "steps: expected int"),
    ("", {"STREAMCHAR_STEPS": "0"}, "must be >= 1"),
    ("steps = [", {}, "cannot read config file"),
    ("guidance = 11.0\n", {}, "guidance must be in [0, 10]"),
    ("", {"STREAMCHAR_AUDIO_GUIDANCE": "-0.5"}, "audio_guidance must be in [0, 10]"),
    ("video_temperature = 3.0\n", {}, "video_temperature must be in [0, 2]"),
])
def test_mistakes_are_errors(tmp_path, content, env, message):
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(RendererConfig, path, env=env)
