"""Trying a finished run's model from the page: chat, generate or classify, through the same code as `tunesmith
chat`, `generate` and `predict`. One model is held at a time (the last one tried) and used by one request at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import UserError
from ..generation import ChatSession, SamplingOptions, generate_completions, load_generator
from ..predict import Classifier

MAX_NEW_TOKENS = 512
MAX_TURNS = 50


def sampling(settings: dict, chat: bool = False) -> SamplingOptions:
    try:
        options = SamplingOptions(max_new_tokens=int(settings.get("max_new_tokens", 100)),
                                  temperature=float(settings.get("temperature", 0.7)), top_k=int(settings.get("top_k", 50)),
                                  top_p=float(settings.get("top_p", 0.95)), seed=int(settings.get("seed", 0)), chat=chat)
    except (TypeError, ValueError):
        raise UserError("max_new_tokens, top_k and seed must be whole numbers; temperature and top_p numbers") from None
    if options.max_new_tokens > MAX_NEW_TOKENS:
        raise UserError(f"max_new_tokens: at most {MAX_NEW_TOKENS} here; use `tunesmith generate` for longer texts")
    options.check()
    return options


class Tryout:
    def __init__(self, device: str = "auto"):
        self.device = device
        self.lock = threading.Lock()
        self.held: tuple[tuple, object] | None = None

    def _load(self, model_dir: Path, kind: str):
        if not (model_dir / "config.json").is_file():
            raise UserError(f"{model_dir.parent.name} has no final model yet; try it once the run has finished")
        key = (str(model_dir), kind, (model_dir / "config.json").stat().st_mtime_ns)
        if self.held is None or self.held[0] != key:
            self.held = None  # the previous model goes before the next loads
            loaded = Classifier(str(model_dir), self.device, log=lambda _m: None) if kind == "classify" else \
                load_generator(str(model_dir), self.device, log=lambda _m: None)
            self.held = (key, loaded)
        return self.held[1]

    def chat(self, model_dir: Path, history: list[dict], text: str, settings: dict) -> str:
        if not text.strip():
            raise UserError("type a message first")
        turns = [{"role": m.get("role"), "content": str(m.get("content", ""))} for m in history[-2 * MAX_TURNS:]]
        if any(turn["role"] not in ("user", "assistant") for turn in turns):
            raise UserError("history: each message has the role user or assistant")
        with self.lock:
            model, tokenizer = self._load(model_dir, "generate")
            session = ChatSession(model, tokenizer, sampling(settings), settings.get("system") or None, turns)
            session.turn = len(turns) // 2
            return session.reply(text.strip())

    def generate(self, model_dir: Path, prompt: str, settings: dict) -> str:
        if not prompt:
            raise UserError("type a prompt first")
        with self.lock:
            model, tokenizer = self._load(model_dir, "generate")
            return generate_completions(model, tokenizer, prompt, sampling(settings))[0].text

    def classify(self, model_dir: Path, text: str) -> dict:
        if not text.strip():
            raise UserError("type a text first")
        with self.lock:
            classifier = self._load(model_dir, "classify")
            probabilities = classifier.probabilities([text])[0]
        if probabilities is None:
            raise UserError("the text is empty once tokenized")
        ranked = sorted(zip(classifier.labels, probabilities.tolist()), key=lambda pair: -pair[1])
        return {"label": ranked[0][0], "probabilities": [{"label": label, "p": round(p, 4)} for label, p in ranked]}


__all__ = ["Tryout"]
