"""What a production agent imports to record its trajectories (recorder, OpenAI client
wrapper, sinks, spool). Built in a later issue; it will depend on msgspec and httpx only."""
