"""Trying a finished run's model from the page: chat, generate, classify or score an answer, through the same code as
`tunesmith chat`, `generate` and `predict`. One model is held at a time (the last one tried) and used by one request at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import UserError
from ..decoding.rules import checked_sampling
from ..inference.generation import ChatSession, Completion, SamplingOptions, generate_completions, load_generator
from ..rundir.folder import config_section
from ..tasks.reward import RewardModel
from ..tasks.trained import Classifier

MAX_NEW_TOKENS = 512
MAX_TURNS = 50
TRIED = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


def sampling(settings, chat: bool = False, also: tuple[str, ...] = ()) -> SamplingOptions:
    """The page's settings under the rules every other way of generating follows; a bad or unknown one is a 400
    naming it, since a misspelt setting silently ignored would answer with the default instead."""
    if not isinstance(settings, dict):
        raise UserError(f"settings: send an object such as {{\"temperature\": 0.7}}, not {type(settings).__name__}")
    unknown = sorted(set(settings) - set(TRIED) - set(also))
    if unknown:
        raise UserError(f"settings.{unknown[0]}: not a setting here; the settings are {', '.join(TRIED + also)}")
    given = {key: settings[key] for key in TRIED if settings.get(key) not in (None, "")}
    options = SamplingOptions(**checked_sampling(given, lambda field: f"settings.{field}"), chat=chat)
    if options.max_new_tokens > MAX_NEW_TOKENS:
        raise UserError(f"settings.max_new_tokens: at most {MAX_NEW_TOKENS} here; use `tunesmith generate` for longer texts")
    return options


def conversation(history) -> list[dict]:
    """The page's earlier turns as chat messages, the last MAX_TURNS exchanges of them."""
    if not isinstance(history, list) or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content", ""), str) for m in history):
        raise UserError('history: send a list of messages, each {"role": "user" or "assistant", "content": text}')
    return [{"role": m["role"], "content": m.get("content", "")} for m in history[-2 * MAX_TURNS:]]


class Tryout:
    def __init__(self, device: str = "auto"):
        self.device = device
        self.lock = threading.Lock()
        self.held: tuple[tuple, object] | None = None
        self.rewards_held: dict[tuple, object] = {}

    def _load(self, model_dir: Path, kind: str):
        if not (model_dir / "config.json").is_file():
            raise UserError(f"{model_dir.parent.name} has no final model yet; try it once the run has finished")
        key = (str(model_dir), kind, files_signature(model_dir))
        if self.held is None or self.held[0] != key:
            self.held = None  # the previous model goes before the next loads
            self.held = (key, LOADERS[kind](str(model_dir), self.device, log=lambda _m: None))
        return self.held[1]

    def chat(self, model_dir: Path, history: list[dict], text: str, settings: dict) -> str:
        if not text.strip():
            raise UserError("type a message first")
        turns = conversation(history)
        options = sampling(settings, also=("system",))
        system = settings.get("system")
        if system is not None and not isinstance(system, str):
            raise UserError("settings.system: send the system message as text")
        with self.lock:
            model, tokenizer = self._load(model_dir, "generate")
            session = ChatSession(model, tokenizer, options, system or None, turns)
            session.turn = len(turns) // 2
            return session.reply(text.strip())

    def generate(self, model_dir: Path, prompt: str, settings: dict) -> Completion:
        if not prompt:
            raise UserError("type a prompt first")
        options = sampling(settings)
        with self.lock:
            model, tokenizer = self._load(model_dir, "generate")
            return generate_completions(model, tokenizer, prompt, options)[0]

    def rewards(self, config: dict | None, confined, prompt: str, completion: Completion) -> dict:
        """A generation's rewards under the run's own: its classifier and reward-model runs (each wholly inside the runs
        folder: `confined` checks, links included) and the built-ins. A Python reward is never run from the page, and a
        reward that cannot be built here is named in `not_scored` with the reason, rather than failing the generation.
        The length counts the stop token that ended the completion, as GRPO's training does (the page stops at the end
        of text, training also at a chat model's end of turn)."""
        from ..config import GrpoConfig

        if not config:
            return {"rewards": {}, "not_scored": ["this run's config.yaml cannot be read (missing, not YAML, or leading outside "
                                                  "the runs folder), so its rewards are unknown"]}
        try:
            saved = GrpoConfig.model_validate({"rewards": config_section(config, "grpo").get("rewards") or []}).rewards
        except ValueError:
            return {"rewards": {}, "not_scored": ["this run's grpo.rewards in its config.yaml cannot be read"]}
        scored, skipped, weighted = {}, [], 0.0
        text, length, kept = completion.text, len(completion.ids) + (completion.stop_id is not None), {}
        with self.lock:
            for spec in saved:
                if spec.kind == "python":
                    skipped.append(f"{spec.label_name} (Python, not run from the page)")
                    continue
                try:
                    reward = self._reward(spec.model_copy(update={"run": str(confined(spec.run))}) if spec.run else spec, kept)
                except UserError as exc:
                    skipped.append(f"{spec.label_name} ({exc})")
                    continue
                value = float(reward.score([prompt], [text], [length])[0][0])
                scored[spec.label_name], weighted = round(value, 4), weighted + spec.weight * value
            self.rewards_held = kept  # only the rewards of the run tried last stay loaded
        return {"rewards": {"total": round(weighted, 4), **scored} if scored else {}, "not_scored": skipped}

    def _reward(self, spec, kept: dict):
        """One reward, built once and kept while the page asks for the same run's rewards (a classifier or reward model
        loads once, and again when its files change); `kept` collects what this request used."""
        from ..config import GrpoConfig
        from ..tasks.grpo.rewards import Rewards, model_folder

        key = (repr(spec.model_dump()), files_signature(model_folder(spec.run)) if spec.run else ())
        kept[key] = self.rewards_held[key] if key in self.rewards_held else Rewards(GrpoConfig(rewards=[spec]), self.device)
        return kept[key]

    def score(self, model_dir: Path, prompt: str, answer: str) -> dict:
        """A reward model's score of an answer to a prompt (which may be empty, as a GRPO reward of the completion alone
        scores it), read as `predict` reads a prompt and its completion."""
        if not answer.strip():
            raise UserError("type an answer first")
        with self.lock:
            return {"reward": round(float(self._load(model_dir, "score").rewards([prompt], [answer])[0]), 4)}

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


def files_signature(folder: Path) -> tuple:
    """What a held model was loaded from: each file's name, inode, size and change time, so that a model replaced in its
    folder (a new export, a file copied over) is loaded again."""
    try:
        return tuple(sorted((entry.name, entry.stat().st_ino, entry.stat().st_size, entry.stat().st_mtime_ns)
                            for entry in folder.iterdir() if entry.is_file()))
    except OSError:
        return ()


LOADERS = {"generate": load_generator, "classify": Classifier, "score": RewardModel}

__all__ = ["Tryout"]
