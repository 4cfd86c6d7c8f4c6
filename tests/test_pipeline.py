"""The in-process pipeline (`streamchar say`): the shipped models, no servers."""

from __future__ import annotations

import pytest

from streamchar.pipeline import Pipeline, PipelineConfig


@pytest.mark.asyncio
async def test_each_chunk_renders_with_the_next_chunks_units_and_silence_after_the_last(character_png) -> None:
    """The whole text is known, so chunk k renders with chunk k+1's units (which an audio prior with lookahead
    reads), and the last chunk with silence. The real renderer, observed through a wrapper that records its calls."""
    pipeline = Pipeline(PipelineConfig())
    calls: list[tuple[int, list[int], list[int] | None]] = []
    render = pipeline.session_renderer.render

    async def recording(meta, chunk_index, units, next_units=None):
        calls.append((chunk_index, list(units), next_units))
        return await render(meta, chunk_index, units, next_units)

    pipeline.session_renderer.render = recording  # type: ignore[method-assign]
    try:
        media, result = await pipeline.speak_to_mp4("One sentence, spoken over a few chunks.", character_png)
    finally:
        await pipeline.close()
    assert len(calls) == len(result.chunks) >= 3 and media
    assert [k for k, _, _ in calls] == list(range(len(calls)))
    for (_, _, ahead), (_, units, _) in zip(calls, calls[1:]):
        assert ahead == units
    silence = pipeline.renderer_models.dit.config.silence_unit
    assert calls[-1][2] == [silence] * len(calls[-1][1])
