"""Logging set-up: every line about a session carries its id."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class SessionAdapter(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[session {self.extra['session_id']}] {msg}", kwargs


def session_logger(name: str, session_id: str) -> SessionAdapter:
    return SessionAdapter(logging.getLogger(name), {"session_id": session_id})


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
