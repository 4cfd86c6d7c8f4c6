"""Orchestrator service: transcript text → frame-aligned audio conditions and the progress pointer."""
