"""What the tests share: tiny corpora, models and configs built on the spot, and a server started in a thread.

Fixtures stay in conftest.py; everything here is a plain function or constant a test module imports.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tunesmith import load_config
from tunesmith.serve import Limits, ServedModel

WORDS = (
    "the lamp glows when you press the button twice and the app shows a green light "
    "reset the hub by holding power for ten seconds then pair it again with the phone "
    "battery lasts about six months and the charger uses a standard cable "
    "if the light blinks red the sensor needs cleaning with a dry cloth"
).split()


def make_corpus(n_docs: int, seed: int = 0, words_per_doc: int = 40) -> list[str]:
    """Documents drawn from a small vocabulary with repeated phrases: easy for a tiny model to learn."""
    rng = random.Random(seed)
    sentences = [" ".join(WORDS[i : i + 8]) for i in range(0, len(WORDS) - 8, 4)]
    docs = []
    for i in range(n_docs):
        picked = [rng.choice(sentences) for _ in range(max(1, words_per_doc // 8))]
        docs.append(f"Article {i}. " + ". ".join(picked) + ".")
    return docs


def cut_run(source: Path, target: Path, last_step: int) -> Path:
    """A copy of a finished run as if it had been killed after the checkpoint at `last_step`."""
    import shutil

    shutil.copytree(source, target)
    for checkpoint in (target / "checkpoints").iterdir():
        if int(checkpoint.name.split("-")[1]) > last_step:
            shutil.rmtree(checkpoint)
    for name in ("final", "final-adapter", "summary.json"):
        path = target / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return target


def finished_run(model: Path, root: Path, **train_settings) -> tuple[Path, Path]:
    """A finished tiny run, with its own corpus and cache under `root`, for a module's tests to share."""
    from tunesmith import train

    data = write_jsonl(root / "corpus.jsonl", make_corpus(120))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNESMITH_HOME", str(root / "home"))
        train(run_config(model, data, root / "run", **train_settings))
    return root / "run", data


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d}) + "\n" for d in docs))
    return path


def train_tokenizer(kind: str, corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>"] if kind == "gpt2" else ["<s>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    if kind == "gpt2":
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny_model(kind: str, directory: Path, extra_corpus: list[str] | None = None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    corpus = make_corpus(200, seed=1) + ["Hello world, a paragraph of plain English text for the tokenizer."] + (extra_corpus or [])
    tokenizer = train_tokenizer(kind, corpus)
    vocab = len(tokenizer)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_config(model, data, out, **train_settings):
    settings = {"lr": 3e-3, "max_steps": 12, "eval_every": 4, "micro_batch_size": 4, "warmup_steps": 2, "precision": "fp32", "patience": None}
    settings.update(train_settings)
    overrides = [("model.name", str(model)), ("data.train", str(data)), ("data.block_size", 32), ("output.dir", str(out))]
    return load_config(None, overrides + [(f"train.{k}", v) for k, v in settings.items()])


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train_loss"] for row in rows if "train_loss" in row}


QUESTIONS = ["how do I reset the hub", "why does the light blink red", "how long does the battery last",
             "which cable does the charger use", "how do I pair the lamp", "what does the green light mean"]


ANSWERS = ["hold power for ten seconds then pair it again", "the sensor needs cleaning with a dry cloth",
           "the battery lasts about six months", "the charger uses a standard cable",
           "press the button twice and the app shows a green light", "the lamp glows when the hub is paired"]


def conversations(n: int) -> list[list[tuple[str, str]]]:
    """(speaker, text) turns: Customer asks, Agent answers, two exchanges each; every conversation distinct."""
    convs = []
    for i in range(n):
        a, b = i % len(QUESTIONS), (i * 5 + 1) % len(QUESTIONS)
        convs.append([("Customer", f"ticket {i}: {QUESTIONS[a]}"), ("Agent", f"{ANSWERS[a]} (case {i})"),
                      ("Customer", QUESTIONS[b]), ("Agent", ANSWERS[b])])
    return convs


ROLE = {"Customer": "user", "Agent": "assistant"}


def write_format(kind: str, path_dir, convs):
    if kind == "messages":
        path = path_dir / "chat.jsonl"
        path.write_text("".join(json.dumps({"messages": [{"role": ROLE[s], "content": t} for s, t in c]}) + "\n" for c in convs))
    elif kind == "sharegpt":
        path = path_dir / "chat.jsonl"
        names = {"Customer": "human", "Agent": "gpt"}
        path.write_text("".join(json.dumps({"conversations": [{"from": names[s], "value": t} for s, t in c]}) + "\n" for c in convs))
    elif kind == "transcript":
        path = path_dir / "chat.txt"
        path.write_text("\n\n".join("\n".join(f"{s}: {t}" for s, t in c) for c in convs) + "\n")
    elif kind == "table_csv":
        path = path_dir / "chat.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["conversation_id", "speaker", "text"])
            for i, c in enumerate(convs):
                writer.writerows([[f"c{i}", s, t] for s, t in c])
    else:  # table_jsonl, rows of different conversations interleaved
        path = path_dir / "chat.jsonl"
        rows = [{"conversation_id": f"c{i}", "speaker": s, "text": t, "turn": k} for i, c in enumerate(convs) for k, (s, t) in enumerate(c)]
        rows.sort(key=lambda r: (r["turn"], r["conversation_id"]))
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_config(model, data, out, **train_settings):
    settings = {"lr": 3e-3, "max_steps": 12, "eval_every": 6, "micro_batch_size": 4, "warmup_steps": 2, "precision": "fp32", "patience": None}
    settings.update(train_settings)
    overrides = [("task", "chat"), ("model.name", str(model)), ("data.train", str(data)), ("data.block_size", 128),
                 ("output.dir", str(out)), ("chat.roles", {"Customer": "user", "Agent": "assistant"})]
    return load_config(None, overrides + [(f"train.{k}", v) for k, v in settings.items()])


POSITIVE = ["great", "love", "excellent", "perfect", "happy"]


NEGATIVE = ["awful", "hate", "broken", "terrible", "sad"]


FILLER = ["the", "lamp", "hub", "battery", "app", "light", "cable", "sensor", "phone", "button"]


def labelled(n: int, seed: int = 0) -> list[dict]:
    """Filler, then one sentiment word: trivially separable, never duplicated."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        filler = " ".join(rng.choice(FILLER, size=6))
        rows.append({"id": i, "review": f"{i}: {filler} {word}", "sentiment": label})
    return rows


def classify_config(model, data, out, method, **train_settings):
    settings = {"lr": 3e-3, "epochs": 4, "eval_every": 25, "micro_batch_size": 2, "warmup_steps": 5, "precision": "fp32", "patience": None}
    settings.update(train_settings)
    overrides = [("task", "classify"), ("model.name", str(model)), ("data.train", str(data)), ("data.block_size", 64),
                 ("data.text_field", "review"), ("data.label_field", "sentiment"), ("data.val_fraction", 0.3),
                 ("output.dir", str(out)), ("classify.method", method), ("clean.dedup_near", False)]
    if method == "generative":
        overrides.append(("classify.prompt", "{text}\nmood:"))
    return load_config(None, overrides + [(f"train.{k}", v) for k, v in settings.items()])


LIMITS = Limits(max_tokens=32, max_prompt_tokens=100, max_body_bytes=4000, max_n=3, max_batch=8, queue_size=64)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(app) -> str:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(200):
        if server.started:
            return f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def load_chat_model(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.tasks.chat import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tokenizer))
    stop = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return ServedModel(model.eval(), tokenizer, "tiny", stop)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# "Billion laughs": ten lines of YAML whose aliases name 10**9 values, a section `train` among them.
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi")) + "train: *i\n"


def one_error_line(capsys, *expected):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for text in expected:
        assert text in err[0], err[0]
    return err[0]
