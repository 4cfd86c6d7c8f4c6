"""Gateway service: the client API, session creation, live muxing and playback pacing."""
