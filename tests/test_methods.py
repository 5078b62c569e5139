"""Training methods (freeze, LoRA, QLoRA's refusal off CUDA) and the regularization knobs, on tiny models."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from tunesmith import train
from tunesmith.cli import main
from tunesmith.errors import ConfigError
from tunesmith.training.fused_loss import training_loss

from helpers import cut_run, losses, run_config



def base_weights(path):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def test_freeze_keeps_embeddings_and_lower_blocks_fixed(tiny_gpt2, corpus_file, tmp_path, capsys):
    cfg = run_config(tiny_gpt2, corpus_file, tmp_path / "run", max_steps=6)
    cfg.model.method, cfg.model.freeze_layers = "freeze", 1
    summary = train(cfg)
    assert "trainable (freeze)" in capsys.readouterr().out
    before, after = base_weights(tiny_gpt2), base_weights(tmp_path / "run" / "final")
    assert torch.equal(before["transformer.wte.weight"], after["transformer.wte.weight"])
    assert torch.equal(before["transformer.h.0.attn.c_attn.weight"], after["transformer.h.0.attn.c_attn.weight"])
    assert not torch.equal(before["transformer.h.1.attn.c_attn.weight"], after["transformer.h.1.attn.c_attn.weight"])
    assert 0 < summary["trainable_parameters"] < sum(v.numel() for k, v in before.items() if k != "lm_head.weight")


def test_train_last_layers_and_impossible_freeze(tiny_llama, corpus_file, tmp_path):
    cfg = run_config(tiny_llama, corpus_file, tmp_path / "run", max_steps=2)
    cfg.model.method, cfg.model.train_last_layers = "freeze", 1
    train(cfg)
    before, after = base_weights(tiny_llama), base_weights(tmp_path / "run" / "final")
    assert torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(before["model.layers.1.mlp.up_proj.weight"], after["model.layers.1.mlp.up_proj.weight"])
    cfg = run_config(tiny_llama, corpus_file, tmp_path / "bad", max_steps=2)
    cfg.model.method, cfg.model.freeze_layers = "freeze", 2
    with pytest.raises(ConfigError, match="the model has 2 blocks"):
        train(cfg)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_lora_trains_small_checkpoints_and_exports_a_merged_model(kind, tiny_models, corpus_file, tmp_path):
    cfg = run_config(tiny_models[kind], corpus_file, tmp_path / "run", max_steps=30, eval_every=10, lr=1e-2)
    cfg.model.method, cfg.model.lora_rank = "lora", 4
    summary = train(cfg)
    assert summary["best_val_loss"] < summary["base_val_loss"] - 0.05
    run = tmp_path / "run"
    checkpoint = sorted((run / "checkpoints").glob("step-*"))[-1] / "trainable.safetensors"
    assert all("lora_" in name for name in load_file(checkpoint))
    assert json.loads((run / "final-adapter" / "adapter_config.json").read_text())["r"] == 4
    merged = AutoModelForCausalLM.from_pretrained(run / "final")
    assert not any("lora" in name for name in merged.state_dict())
    from tunesmith import evaluate, load_config

    result = evaluate(str(run), str(corpus_file), load_config(None, [("data.block_size", 32), ("train.precision", "fp32")]))
    assert result.loss < summary["base_val_loss"]


def test_lora_resume_is_exact(tiny_llama, corpus_file, tmp_path):
    def config(out):
        cfg = run_config(tiny_llama, corpus_file, out, max_steps=10, eval_every=3, keep_last=10, lr=1e-2)
        cfg.model.method = "lora"
        return cfg

    train(config(tmp_path / "whole"))
    cut_run(tmp_path / "whole", tmp_path / "cut", last_step=3)
    train(config(tmp_path / "cut"), resume=True)
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), abs=1e-6)


def test_qlora_off_cuda_names_the_alternatives(tiny_llama, corpus_file, tmp_path, capsys):
    code = main(["train", "--model", str(tiny_llama), "--data", str(corpus_file), "--block-size", "32", "--out", str(tmp_path / "q"),
                 "--set", "model.method=qlora"])
    err = capsys.readouterr().err
    assert code == 2 and "qlora needs a CUDA GPU" in err and "use lora" in err


def test_dropout_override_reaches_the_saved_config(tiny_models, corpus_file, tmp_path):
    for kind, field in (("gpt2", "resid_pdrop"), ("llama", "attention_dropout")):
        cfg = run_config(tiny_models[kind], corpus_file, tmp_path / kind, max_steps=2)
        cfg.model.dropout = 0.3
        train(cfg)
        assert getattr(AutoConfig.from_pretrained(tmp_path / kind / "final"), field) == 0.3


class ConfidentModel(torch.nn.Module):
    """Predicts every next token with high confidence, where label smoothing shows clearly."""

    def forward(self, input_ids, use_cache=False):
        logits = torch.full((*input_ids.shape, 16), -5.0)
        logits.scatter_(-1, input_ids.roll(-1, dims=1)[..., None], 5.0)
        return SimpleNamespace(logits=logits)


def test_label_smoothing_raises_the_training_loss_only(tiny_llama, corpus_file, tmp_path):
    tokens = torch.randint(0, 16, (2, 12))
    assert training_loss(ConfidentModel(), False, 0.2)(tokens) > training_loss(ConfidentModel(), False, 0.0)(tokens) + 1.0
    plain = train(run_config(tiny_llama, corpus_file, tmp_path / "plain", max_steps=3))
    smooth = train(run_config(tiny_llama, corpus_file, tmp_path / "smooth", max_steps=3, label_smoothing=0.2))
    assert losses(tmp_path / "smooth") != losses(tmp_path / "plain")
    assert smooth["base_val_loss"] == pytest.approx(plain["base_val_loss"])


def test_gradient_checkpointing_gives_the_same_losses(tiny_llama, corpus_file, tmp_path):
    train(run_config(tiny_llama, corpus_file, tmp_path / "plain", max_steps=4))
    cfg = run_config(tiny_llama, corpus_file, tmp_path / "ckpt", max_steps=4)
    cfg.model.gradient_checkpointing = True
    train(cfg)
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), abs=1e-5)


def test_every_method_the_config_takes_is_registered_once():
    from typing import get_args

    from tunesmith.config import ModelConfig
    from tunesmith.methods import METHODS

    assert set(get_args(ModelConfig.model_fields["method"].annotation)) == set(METHODS)
    assert all(name == method.name for name, method in METHODS.items())
    assert [name for name, method in METHODS.items() if method.fallback] == ["lora", "freeze"]  # recommend's order


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_output_layer_reads_contiguous_hidden_states_and_the_logits_do_not_change(tiny_models, kind):
    """A model asked for its last positions' logits hands the output layer a strided slice, which a CPU matmul answers by
    copying the whole layer once per row; a model tunesmith loads (resized for added tokens, wrapped in LoRA adapters,
    copied as a frozen reference) makes the slice contiguous first."""
    import copy

    from transformers import AutoTokenizer

    from tunesmith.config import load_config
    from tunesmith.methods import apply_method
    from tunesmith.models import ResolvedModel, fit_embeddings, load_model

    path = str(tiny_models[kind])
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<added>"]})
    model = load_model(ResolvedModel(path, path, True, False))
    fit_embeddings(model, tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)  # resized for the added token
    wrapped = copy.deepcopy(apply_method(model, load_config(None, [("model.method", "lora")]).model)).eval()
    seen = []
    wrapped.get_output_embeddings().register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(0, 100, (3, 12))
    with torch.no_grad():
        last = wrapped(input_ids=ids, logits_to_keep=5).logits
        every = wrapped(input_ids=ids).logits
    assert seen[0] is True and torch.allclose(last, every[:, -5:], atol=1e-6)
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    plain.get_output_embeddings().register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        plain(input_ids=ids, logits_to_keep=5)
    assert seen[-1] is False  # what the hook is for: transformers slices the hidden states


def test_adapters_decode_in_fp32_on_a_cpu_and_are_put_back(tiny_llama):
    """GRPO samples on a CPU with the adapters' products in fp32 outside autocast: the logits are autocast's base
    layers plus the adapters' fp32 contribution (close to a decode under autocast throughout), and the modules and the
    fp32 parameters the optimizer holds are the model's again afterwards, unchanged."""
    from tunesmith.config import ModelConfig
    from tunesmith.methods import apply_method
    from tunesmith.methods.adapters import adapters_for_decoding

    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_llama), ModelConfig(method="lora")).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)  # B starts at zero: give the adapters an effect
    trained = {name: (p, p.detach().clone()) for name, p in model.named_parameters() if p.requires_grad}
    modules = dict(model.named_modules())
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=ids).logits.float()
        with adapters_for_decoding(model, torch.device("cpu"), torch.bfloat16):
            decoding = model(input_ids=ids).logits.float()
        with model.disable_adapter():
            base = model(input_ids=ids).logits.float()
        with adapters_for_decoding(model, torch.device("cpu"), None):  # no autocast: nothing to change
            assert torch.equal(model(input_ids=ids).logits.float(), plain)
    assert not torch.equal(plain, decoding) and (plain - decoding).abs().max() < 0.05 * (plain - base).abs().max()
    assert dict(model.named_modules()) == modules
    with pytest.raises(RuntimeError, match="mid-sampling"), adapters_for_decoding(model, torch.device("cpu"), torch.bfloat16):
        raise RuntimeError("mid-sampling")
    assert dict(model.named_modules()) == modules
    now = dict(model.named_parameters())
    assert all(now[name] is parameter and torch.equal(parameter, before) for name, (parameter, before) in trained.items())
