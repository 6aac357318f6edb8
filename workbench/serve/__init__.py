"""`workbench serve`: an OpenAI-compatible HTTP server for workbench checkpoints.

- ``sources``: which checkpoints a list of paths (checkpoints or recipe run directories) names.
- ``batcher``: continuous batching of concurrent requests for one loaded model.
- ``pool``: the models, loaded on first use and unloaded when idle or when memory is short.
- ``protocol``: OpenAI request validation, response and error bodies.
- ``app``: the FastAPI application; ``server``: start-up checks and uvicorn.
"""
