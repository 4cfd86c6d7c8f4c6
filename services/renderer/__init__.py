"""Renderer service: audio conditions → jointly denoised audio+video chunks, state in the store."""
