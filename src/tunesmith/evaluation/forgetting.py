"""What fine-tuning costs a model elsewhere: a fixed probe of general text, scored at each evaluation.

The default probe is the base model's own text: texts sampled once from it (temperature 1, no truncation,
seeded, from a few neutral openings; through the chat template for a chat model), cached per model. The
base model's mean negative log-likelihood on its own samples estimates its entropy; a tuned model's, that
entropy plus its KL divergence from the base. Their difference, `drift_nats`, is what fine-tuning moved
away from, measured without shipping a corpus. A file of the user's own general text is scored too, as a
plain perplexity (`general_ppl`).

Rehearsal text for data.replay comes from the same places, never from what the probe scores: samples
drawn with other seeds, or the documents of the general file that the probe leaves to it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..batch import Batch
from ..config import PROBE_WORDS, CleanConfig, DataConfig, MonitorConfig, RunConfig
from ..data.clean import text_digest
from ..data.examples import padded_rows
from ..data.formats import check_text_file
from ..data.read import DocumentReader, expand_paths
from ..data.report import DataReport
from ..data.split import hash_bucket
from ..errors import ConfigError
from ..inference.generation import SamplingOptions, default_stop_ids, encode_prompt, generate_many
from ..models import ResolvedModel, load_model, load_tokenizer, tunesmith_home
from ..rundir.durable import write_atomically
from ..runtime import autocast, low_precision_dtype
from ..measures import perplexity, perplexity_ratio
from ..tasks.loss import term_losses

TEXT_TOKENS = 128  # each sampled text, and each piece of a general file, is at most this long
MAX_TEXTS = 256
PROBE_SHARE = 0.1  # of the validation tokens: the probe's cost is about this share of an evaluation's
MIN_TOKENS, MAX_TOKENS = 256, 32768
SAMPLE_SEED = 20240229
REPLAY_KEYS = 1 << 20  # rehearsal samples draw from keys (seeds) past every probe sample's
MAX_REPLAY_TEXTS = 2048
FILE_PROBE_SHARE = 0.2  # of a general file's documents, by a stable hash; replay reads the others
OPENINGS = ("The", "In", "Once upon a time,", "It was", "Today", "Here is", "When the", "My")
CHAT_OPENINGS = ("Tell me something interesting.", "Write a short story.", "Explain how something you know works.",
                 "Give me some advice.", "Describe a place.", "What should I cook tonight?", "Write a short poem.",
                 "Ask me a question and answer it.")

Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input ids, attention mask) -> next-token logits


@dataclass(frozen=True)
class ProbeText:
    """Tokens scored (`ids`) after tokens that only condition them (`prompt`)."""

    prompt: list[int]
    ids: list[int]


def probe_tokens(cfg: MonitorConfig, val_tokens: int) -> int:
    """How many tokens each probe scores: monitor.probe_tokens, or a tenth of the validation tokens within bounds."""
    if cfg.probe_tokens:
        return cfg.probe_tokens
    return int(min(MAX_TOKENS, max(MIN_TOKENS, PROBE_SHARE * val_tokens)))


def _file_key(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def model_key(resolved: ResolvedModel, tokenizer) -> str:
    """The base model's identity: its name, and for a local model what its files hold."""
    from ..data.tokens import tokenizer_fingerprint

    digest = hashlib.sha256(f"{resolved.path}|{tokenizer_fingerprint(tokenizer)}".encode())
    folder = Path(resolved.path)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix in (".json", ".safetensors", ".bin"):
                stat = path.stat()
                digest.update(f"|{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


class BaseSampler:
    """Texts sampled from the base model (the teacher, for a student cut from it), cached under $TUNESMITH_HOME/probes
    by model; the model loads only when more are needed.

    Text number k always draws from the seed of k, so a cache grown later holds what one long sampling would have.
    """

    def __init__(self, resolved: ResolvedModel, device: torch.device, precision: str, log=print, source: str = "the base model"):
        """`source`: what the logs call the model sampled (a student cut from its teacher samples the teacher)."""
        self.resolved, self.device, self.precision, self.log, self.source = resolved, device, precision, log, source
        self.tokenizer = load_tokenizer(resolved)
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.path = tunesmith_home() / "probes" / f"{model_key(resolved, self.tokenizer)}.json"
        self.cache: dict[int, ProbeText] = self._read()

    def _read(self) -> dict[int, ProbeText]:
        try:
            rows = json.loads(self.path.read_text())
            return {int(key): ProbeText(list(row["prompt"]), list(row["ids"])) for key, row in rows.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none yet, or damaged: sample again
            return {}

    def texts(self, keys: list[int]) -> list[ProbeText]:
        """The texts of these keys, sampling those not cached yet; empty texts (an immediate end) are left out."""
        missing = [key for key in keys if key not in self.cache]
        if missing:
            self.cache.update(self._sample(missing))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps({str(k): {"prompt": t.prompt, "ids": t.ids} for k, t in sorted(self.cache.items())}))
        return [self.cache[key] for key in keys if self.cache[key].ids]

    def probe_ids(self) -> set[tuple[int, ...]]:
        return {tuple(t.ids) for key, t in self.cache.items() if key < REPLAY_KEYS}

    def rehearsal_ids(self) -> set[tuple[int, ...]]:
        return {tuple(t.ids) for key, t in self.cache.items() if key >= REPLAY_KEYS}

    def prompt(self, key: int) -> list[int]:
        openings = CHAT_OPENINGS if self.chat else OPENINGS
        return encode_prompt(self.tokenizer, openings[key % len(openings)], self.chat)

    def _sample(self, keys: list[int]) -> dict[int, ProbeText]:
        self.log(f"probe: sampling {len(keys)} texts of up to {TEXT_TOKENS} tokens from {self.source} (once per model)")
        model = load_model(self.resolved).to(self.device).eval()
        prompts = [self.prompt(key) for key in keys]
        options = SamplingOptions(max_new_tokens=TEXT_TOKENS, temperature=1.0, top_k=0, top_p=1.0, seed=SAMPLE_SEED)
        with autocast(self.device, self.precision):
            done = generate_many(model, self.tokenizer, prompts, options, default_stop_ids(model, self.tokenizer, self.chat),
                                 max_batch=32, keys=keys)
        del model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return {key: ProbeText(prompt, completions[0].ids) for key, prompt, completions in zip(keys, prompts, done)}


def check_general_probe(cfg: MonitorConfig) -> None:
    """A general text file that is not there, or is binary, fails before the data is prepared."""
    if cfg.general_probe not in PROBE_WORDS:
        _probe_files(cfg.general_probe)


def check_drift_tokenizer(spec: str, trained, other) -> None:
    """monitor.drift_from's tokenizer must give each of its tokens the trained model's id for it, or their likelihoods of
    one text do not compare; the trained model may have tokens of its own (a chat template's, added for a chat run)."""
    ours = trained.get_vocab()
    token = next((t for t, i in sorted(other.get_vocab().items()) if ours.get(t) != i), None)
    if token is not None:
        raise ConfigError([f"monitor.drift_from: {spec} has another tokenizer than the model trained (token {token!r} is "
                           f"{other.get_vocab()[token]} there and {ours.get(token)} here), so their likelihoods of one text do "
                           "not compare; name the model this run's model started from"])


def _probe_files(path: str) -> list[Path]:
    """The probe's files, each checked for text here so that a binary one is named under its own key."""
    files = expand_paths([path], "monitor.general_probe")
    for file in files:
        check_text_file(file, "monitor.general_probe")
    return files


def _read_documents(path: str) -> list[str]:
    """A general text file's (or folder's) documents: .txt split at blank lines, records by their "text" field."""
    files = _probe_files(path)
    reader = DocumentReader.for_data(DataConfig(), CleanConfig(), DataReport(), on_error="skip")
    documents = [text.strip() for text in reader.read(files) if text.strip()]
    if not documents:
        raise ConfigError([f"monitor.general_probe: {path} holds no text; give .txt documents or records with a text field"])
    return documents


def split_general_file(path: str) -> tuple[list[str], list[str]]:
    """The general file's documents for the probe (a fifth, at least one, by a stable hash) and for rehearsal (the rest)."""
    documents = sorted(_read_documents(path), key=lambda text: hash_bucket(text_digest(text)))
    cut = max(1, math.ceil(FILE_PROBE_SHARE * len(documents)))
    return documents[:cut], documents[cut:]


def file_texts(documents: list[str], tokenizer, budget: int, context: int | None = None) -> list[ProbeText]:
    """Pieces of up to TEXT_TOKENS scored tokens (fewer when the model's context is shorter), each after its first
    token, until `budget` tokens are scored."""
    longest = min(TEXT_TOKENS, context - 1) if context else TEXT_TOKENS
    texts, scored = [], 0
    for document in documents:
        ids = tokenizer(document, add_special_tokens=False).input_ids
        for start in range(0, max(0, len(ids) - 1), longest):
            piece = ids[start : start + longest + 1]
            if len(piece) < 2 or scored >= budget:
                continue
            texts.append(ProbeText(piece[:1], piece[1:]))
            scored += len(piece) - 1
        if scored >= budget:
            break
    return texts


@torch.no_grad()
def mean_nll(logits_of: Logits, texts: list[ProbeText], batch_size: int, device: torch.device, precision: str) -> float:
    """Mean negative log-likelihood per scored token, in nats; rows right-padded, longest first."""
    total, count = 0.0, 0
    ordered = sorted(texts, key=lambda t: -(len(t.prompt) + len(t.ids)))
    for start in range(0, len(ordered), batch_size):
        pieces = [(np.array(t.prompt + t.ids), np.r_[np.zeros(len(t.prompt), bool), np.ones(len(t.ids), bool)])
                  for t in ordered[start : start + batch_size]]
        ids, labels, attention = (torch.from_numpy(array).to(device) for array in padded_rows(pieces, 0))
        with autocast(device, precision):
            logits = logits_of(ids, attention)
        losses, weights, _ = term_losses(logits, Batch(ids, labels=labels, attention_mask=attention))
        total += float((losses * weights).sum())
        count += int(weights.sum())
    return total / max(count, 1)


@dataclass
class Probe:
    """The texts each evaluation scores: the base model's samples (drift_nats) and, when given, a general file (general_ppl)."""

    samples: list[ProbeText]
    general: list[ProbeText]
    general_source: str | None = None
    samples_source: str = "the base model"
    zero_from: ResolvedModel | None = None  # monitor.drift_from: its NLL is the zero; None: the run's model at its first evaluation

    @property
    def tokens(self) -> int:
        return sum(len(t.ids) for t in self.samples + self.general)

    def describe(self) -> str:
        parts = [f"{len(self.samples)} texts sampled from {self.samples_source} ({sum(len(t.ids) for t in self.samples):,} tokens)"]
        if self.general:
            parts.append(f"{sum(len(t.ids) for t in self.general):,} tokens of {self.general_source}")
        return "probe: " + " and ".join(parts)

    def texts_record(self) -> dict:
        """The texts as a checkpoint keeps them: a resume scores these, whatever the sampler's cache or the general file
        hold by then, since the drift's zero was measured on them."""
        return {part: [[t.prompt, t.ids] for t in texts] for part, texts in (("samples", self.samples), ("general", self.general))}

    def take_texts(self, record, measured: set[str], vocab: int, context: int | None) -> None:
        """Score the texts of a checkpoint's `texts_record`, which must hold texts for exactly the parts its zero was
        `measured` on; ValueError when it is not such a record (hand-edited, say)."""
        if not isinstance(record, dict) or set(record) != {"samples", "general"}:
            raise ValueError("not a mapping of samples and general texts")
        parts = {part: _recorded_texts(record[part], vocab, context) for part in ("samples", "general")}
        if bool(parts["general"]) != ("general" in measured):
            raise ValueError(f"they are not texts for the parts the drift's zero was measured on ({', '.join(sorted(measured))})")
        self.samples, self.general = parts["samples"], parts["general"]

    def measure(self, logits_of: Logits, batch_size: int, device: torch.device, precision: str) -> dict[str, float]:
        """Mean NLL per token on each part: {"samples": ..., "general": ...}."""
        nll = {"samples": mean_nll(logits_of, self.samples, batch_size, device, precision)}
        if self.general:
            nll["general"] = mean_nll(logits_of, self.general, batch_size, device, precision)
        return nll


def _recorded_texts(texts, vocab: int, context: int | None) -> list[ProbeText]:
    """One part of a checkpoint's probe texts, each [prompt ids, scored ids]: ids of the tokenizer, some scored, all
    within the model's context; ValueError otherwise."""
    def ids(values) -> list[int]:
        if not isinstance(values, list) or not all(type(i) is int and 0 <= i < vocab for i in values):
            raise ValueError(f"a text that is not a list of token ids below {vocab}")
        return values

    if not isinstance(texts, list) or not all(isinstance(text, list) and len(text) == 2 for text in texts):
        raise ValueError("not a list of [prompt, scored] texts")
    made = [ProbeText(ids(prompt), ids(scored)) for prompt, scored in texts]
    if any(not text.ids or (context and len(text.prompt) + len(text.ids) > context) for text in made):
        raise ValueError("a text with no scored tokens, or longer than the model's context")
    return made


def probe_row(nll: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """One evaluation's metrics: the drift in nats per token from the base model, the share of the base's perplexity that
    is retained (exp(-drift): 1 when nothing is lost), and the general text's perplexity and drift."""
    drift = nll["samples"] - base["samples"]
    row = {"drift_nats": drift, "retained_ppl_ratio": perplexity_ratio(-drift)}
    if "general" in nll:
        row["general_ppl"] = perplexity(nll["general"])
        row["general_drift_nats"] = nll["general"] - base["general"]
    return row


def build_probe(cfg: MonitorConfig, sampler: BaseSampler, tokenizer, val_tokens: int, context: int | None = None) -> Probe | None:
    """The run's probe, or None with monitor.general_probe none."""
    if cfg.general_probe == "none":
        return None
    budget = probe_tokens(cfg, val_tokens)  # tokens run through the model: each text's opening costs as much as its own tokens
    count = min(MAX_TEXTS, max(2, budget // (TEXT_TOKENS + len(sampler.prompt(0)))))
    rehearsed = sampler.rehearsal_ids()
    samples = [t for t in sampler.texts(list(range(count))) if tuple(t.ids) not in rehearsed]
    general, source = [], None
    if cfg.general_probe != "auto":
        general, source = file_texts(split_general_file(cfg.general_probe)[0], tokenizer, budget, context), cfg.general_probe
    return Probe(samples, general, source, sampler.source, sampler.resolved if cfg.drift_from is not None else None)


def zero_point(probe: Probe, batch_size: int, device: torch.device, precision: str) -> dict[str, float]:
    """The NLL of monitor.drift_from's model on the probe, which its drift is counted from: loaded once (frozen, so in
    the run's low precision, like a teacher), then let go."""
    nll = _measure_model(probe, load_model(probe.zero_from, dtype=low_precision_dtype(precision)).to(device).eval(), batch_size,
                         device, precision)
    if device.type == "cuda":  # the model is let go on return
        torch.cuda.empty_cache()
    return nll


def _measure_model(probe: Probe, model: torch.nn.Module, batch_size: int, device: torch.device, precision: str) -> dict[str, float]:
    return probe.measure(lambda ids, mask: model(input_ids=ids, attention_mask=mask, use_cache=False).logits, batch_size, device,
                         precision)


def rehearsal_file(cfg: MonitorConfig, sampler: BaseSampler, texts_wanted: int) -> Path:
    """data.replay's text as {"text": ...} records: the general file's documents the probe leaves, or fresh base-model samples.

    Samples draw from seeds apart from the probe's, and any that repeats a probe text word for word is left out.
    """
    directory = tunesmith_home() / "probes"
    directory.mkdir(parents=True, exist_ok=True)
    if cfg.general_probe not in PROBE_WORDS:
        rest = split_general_file(cfg.general_probe)[1]
        if not rest:
            raise ConfigError([f"monitor.general_probe: {cfg.general_probe} has too few documents to leave any for data.replay "
                               "beside the probe's; add documents, or set data.replay=0"])
        path = directory / f"{_file_key(expand_paths([cfg.general_probe], 'monitor.general_probe'))}.replay.jsonl"
        records = rest
    else:
        count = min(MAX_REPLAY_TEXTS, max(16, texts_wanted))
        probed = sampler.probe_ids()
        samples = [t for t in sampler.texts(list(range(REPLAY_KEYS, REPLAY_KEYS + count))) if tuple(t.ids) not in probed]
        path = sampler.path.with_name(f"{sampler.path.stem}.replay-{count}.jsonl")
        records = [sampler.tokenizer.decode(t.ids, skip_special_tokens=True) for t in samples]
    if not path.is_file():
        write_atomically(path, "".join(json.dumps({"text": text}) + "\n" for text in records if text.strip()))
    return path


def replay_files(cfg: RunConfig, sampler: BaseSampler | None) -> list[Path]:
    """data.replay's rehearsal file, or none when it is 0.

    Samples wanted: about the replay share of the data's tokens (4 bytes a token); the mix then sets the share exactly.
    """
    if not cfg.data.replay:
        return []
    data_bytes = sum(path.stat().st_size for path in expand_paths(cfg.data.train_paths, "data.train"))
    tokens = data_bytes / 4 * (1 - cfg.data.val_fraction) * cfg.data.replay / (1 - cfg.data.replay)
    return [rehearsal_file(cfg.monitor, sampler, math.ceil(tokens / TEXT_TOKENS))]
