"""The fused output layer + cross-entropy gives the loss and the gradients of the plain computation."""

import pytest
import torch
import torch.nn.functional as F

from tunesmith.models import parts
from tunesmith.training import fused_loss
from tunesmith.training.fused_loss import linear_cross_entropy

from helpers import run_config


@pytest.mark.parametrize("multiple", [1, 64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_linear_then_cross_entropy_across_chunks(smoothing, weighted, multiple, monkeypatch):
    """Also with the output rows padded for the matmuls (as on CUDA): the padding takes no probability and no gradient."""
    monkeypatch.setattr(fused_loss, "CHUNK_BYTES", 7 * 4 * 50)  # 7 positions of the 50-token vocabulary: several chunks, the last one short
    torch.manual_seed(0)
    hidden = torch.randn(30, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (30,))
    weights = torch.rand(30) + 0.5 if weighted else None

    fused = linear_cross_entropy(hidden, weight, targets, weights, smoothing, multiple=multiple)
    fused.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    terms = F.cross_entropy(hidden @ weight.T, targets, reduction="none", label_smoothing=smoothing)
    w = weights if weighted else torch.ones(30)
    plain = (terms * w).sum() / w.sum()
    plain.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-5) and torch.allclose(grads[1], weight.grad, atol=1e-5)


def test_training_with_and_without_fusion_gives_the_same_losses(tiny_gpt2, corpus_file, tmp_path):
    import json

    from tunesmith import train


    def losses(out, fused):
        cfg = run_config(tiny_gpt2, corpus_file, out, max_steps=6)
        cfg.train.fused_loss = fused
        train(cfg)
        return [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if "train_loss" in line]

    assert losses(tmp_path / "fused", True) == pytest.approx(losses(tmp_path / "plain", False), abs=1e-4)


def test_a_chunk_of_fp32_logits_stays_within_64_mb_whatever_the_vocabulary():
    for vocab in (50, 49_152, 50_257, 128_256, 262_144):
        positions = parts.chunk_positions(vocab, fused_loss.CHUNK_BYTES)
        assert positions >= 1 and positions * vocab * 4 <= 64 * 2**20


def test_a_model_that_scales_its_logits_after_the_output_layer_is_not_fused():
    """Soft-capping (Gemma 2), Cohere's logit_scale, Granite's logits_scaling: the fused loss would skip them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.models.parts import output_parts

    def llama(**config_extra):
        return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, **config_extra))

    assert output_parts(llama()) is not None and output_parts(llama(logits_scaling=1.0)) is not None
    for name, value in [("final_logit_softcapping", 30.0), ("logit_scale", 0.0625), ("logits_scaling", 8.0), ("output_multiplier", 2)]:
        assert output_parts(llama(**{name: value})) is None, name


def test_fp16_gradients_of_a_chunk_neither_overflow_nor_underflow():
    """Many positions with one unlikely target and large hidden states, under fp16 autocast: the output weight's gradient
    (about -75,000 summed over the chunk, past fp16's 65,504) stays finite and matches fp32's."""
    from tunesmith.distill.fused import chunked_output_loss

    hidden = torch.full((300, 8), 250.0) + torch.randn(300, 8)
    weight = (torch.randn(16, 8) * 0.01).requires_grad_()
    targets = (hidden[:1] @ weight.T).argmin(-1).expand(300)  # the least likely token: a gradient near -250 per position
    reference = linear_cross_entropy(hidden, weight, targets)
    expected = torch.autograd.grad(reference, weight)[0]
    for fused in (lambda: linear_cross_entropy(hidden, weight, targets),
                  lambda: chunked_output_loss(hidden, weight, torch.ones(300),
                                              lambda logits, a, b: F.cross_entropy(logits, targets[a:b], reduction="none"))):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = fused()
        grad = torch.autograd.grad(loss, weight)[0]
        assert torch.isfinite(grad).all() and (grad - expected).norm() < 1e-2 * expected.norm()
