"""`tunesmith serve`: an OpenAI-compatible HTTP API over one generation worker that batches every request.

`app` holds the HTTP side and `worker` the thread that owns the model; the decoding itself (the running
batch, the per-row token choice, stop strings) is `tunesmith.inference.decoding`, shared with `generate` and `chat`.
"""

from __future__ import annotations

from .app import API_KEY_VARIABLE, Limits, ServedModel, create_app

__all__ = ["API_KEY_VARIABLE", "Limits", "ServedModel", "create_app", "load_for_serving", "run_server"]


def load_for_serving(spec: str, device: str = "auto") -> ServedModel:
    from pathlib import Path

    from ..inference.generation import load_generator
    from ..tasks.chat import stop_token_ids

    model, tokenizer = load_generator(spec, device, device_setting="--device")
    return ServedModel(model, tokenizer, Path(spec).name or spec, stop_token_ids(tokenizer, getattr(model, "name_or_path", None)))


def run_server(app, host: str, port: int, shutdown_seconds: float = 2.0) -> None:
    """uvicorn, with SIGTERM and Ctrl-C ending every request at once (an error event for a stream), so the
    process exits within a few seconds even mid-generation."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.worker.stop(timeout=0)
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=shutdown_seconds)).run()
