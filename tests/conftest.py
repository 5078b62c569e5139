"""The fixtures: tiny models built in-process (a 2-layer GPT-2 and a 2-layer Llama, tokenizers trained on the spot) and saved as
HF directories, a cache of its own for each test, and the embedded default fine-tuned once for the tests that need it."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import build_tiny_model, make_corpus, write_jsonl


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: build_tiny_model(kind, root / kind) for kind in ("gpt2", "llama")}


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_models) -> Path:
    return tiny_models["gpt2"]


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> Path:
    """Each test gets its own cache, so prepared data never leaks between tests."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", make_corpus(120))


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory):
    """A cache holding the embedded default, converted once for the session (about half a minute), and what the
    conversion said."""
    from types import SimpleNamespace

    from tunesmith.models import resolve_model

    home = tmp_path_factory.mktemp("embedded-home")
    messages: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNESMITH_HOME", str(home))
        patch.setenv("HF_HUB_OFFLINE", "1")
        resolved = resolve_model("smollm2-135m", log=messages.append)
    return SimpleNamespace(path=home, messages=messages, model=Path(resolved.path))


@pytest.fixture(scope="session")
def embedded_run(tmp_path_factory, embedded_home):
    """The embedded default fine-tuned for two steps (full, micro-batch 2 of 128 tokens), with the measured peak of its
    tensor memory; shared by the tests of memory estimates and of GGUF export, since one run costs about a minute."""
    from types import SimpleNamespace

    from tunesmith.api import prepare
    from tunesmith.config import load_config
    from tunesmith.planning.measure import peak_tensor_bytes
    from tunesmith.training import train_run
    from tunesmith.runtime import pick_device

    from tunesmith.quickstart import EXAMPLE_CORPUS

    root = tmp_path_factory.mktemp("embedded")
    corpus = Path(str(EXAMPLE_CORPUS))  # English text: a model's perplexity on it is not oversensitive to rounding
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNESMITH_HOME", str(embedded_home.path))
        patch.setenv("HF_HUB_OFFLINE", "1")
        cfg = load_config(None, [("model.name", "smollm2-135m"), ("data.train", [str(corpus)]), ("data.block_size", 128),
                                 ("train.micro_batch_size", 2), ("train.max_steps", 2), ("train.eval_every", 2),
                                 ("train.eval_max_blocks", 8), ("monitor.sample_count", 0), ("monitor.tensorboard", False),
                                 ("output.dir", str(root / "run"))])
        prepare(cfg)  # the one-time conversion and the tokenizing stay outside the measured run
        _, peak = peak_tensor_bytes(lambda: train_run(cfg), pick_device("auto"))
    return SimpleNamespace(run=root / "run", corpus=corpus, peak=peak, micro_batch=2, block_size=128)


@pytest.fixture(scope="session")
def finished_run(tiny_models, tmp_path_factory):
    """A 12-step run with checkpoints at 4, 8 and 12, which each test copies (and cuts back) rather than changes."""
    from helpers import finished_run as train_once

    run, data = train_once(tiny_models["gpt2"], tmp_path_factory.mktemp("safety"), max_steps=12, eval_every=4, keep_last=5)
    return run, data, tiny_models["gpt2"]
