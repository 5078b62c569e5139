"""Light and fast training: shared adapter dropout, frozen weights in the compute dtype, bf16 weights that still
learn, and compiling on a CPU only when it repays."""

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from tunesmith import train
from tunesmith.cli import main
from tunesmith.config import ModelConfig
from tunesmith.methods import apply_method, storage_dtypes
from tunesmith.models.weights import store_weights
from tunesmith.training.compiling import CompileWhenItRepays, seconds_saved
from tunesmith.training.optim import StochasticRoundingAdamW

from helpers import cut_run, losses, run_config



class CountOps(TorchDispatchMode):
    def __init__(self, name: str):
        super().__init__()
        self.name, self.count = name, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.__name__.startswith(self.name)
        return func(*args, **(kwargs or {}))


def test_adapters_that_read_one_input_share_one_dropout_mask(tiny_llama):
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_llama), ModelConfig(method="lora", lora_dropout=0.5)).train()
    ids = torch.randint(5, 100, (2, 16))
    with CountOps("bernoulli") as counter:
        model(input_ids=ids)
    # per block: q, k and v read one input, gate and up another, then o and down one each: 4 masks, not 7
    assert counter.count == 4 * model.config.num_hidden_layers
    assert ModelConfig().lora_dropout == 0.0  # the default draws none


def test_frozen_weights_are_stored_in_the_compute_dtype_and_trained_ones_stay_fp32(tiny_llama):
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_llama), ModelConfig(method="lora"))
    store_weights(model, *storage_dtypes("lora", "fp32", "bf16"))
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert all(d == torch.float32 for name, d in dtypes.items() if "lora_" in name)
    assert all(d == torch.bfloat16 for name, d in dtypes.items() if "lora_" not in name)  # norms too: their output stays bf16
    assert storage_dtypes("full", "fp32", "bf16") == (None, None) and storage_dtypes("lora", "fp32", "fp32") == (None, None)


def test_freeze_under_bf16_exports_the_frozen_blocks_bit_for_bit(tiny_llama, corpus_file, tmp_path, capsys):
    cfg = run_config(tiny_llama, corpus_file, tmp_path / "run", max_steps=4, precision="bf16")
    cfg.model.method, cfg.model.train_last_layers = "freeze", 1
    train(cfg)
    assert "frozen weights in bf16" in capsys.readouterr().out
    before = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").state_dict()
    frozen = "model.layers.0.mlp.up_proj.weight"
    assert after[frozen].dtype == torch.float32 and torch.equal(before[frozen], after[frozen])  # not rounded through bf16
    assert not torch.equal(before["model.layers.1.mlp.up_proj.weight"], after["model.layers.1.mlp.up_proj.weight"])


def test_lora_under_bf16_merges_its_adapters_into_the_fp32_base(tiny_llama, corpus_file, tmp_path):
    from peft import PeftModel

    cfg = run_config(tiny_llama, corpus_file, tmp_path / "run", max_steps=6, precision="bf16", lr=1e-2)
    cfg.model.method = "lora"
    summary = train(cfg)
    assert summary["best_val_loss"] < summary["base_val_loss"]
    run = tmp_path / "run"
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run / "final-adapter").merge_and_unload()
    final = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    for name, tensor in expected.state_dict().items():
        assert final[name].dtype == torch.float32 and torch.allclose(final[name], tensor, atol=1e-6), name


def test_stochastic_rounding_keeps_updates_smaller_than_the_bf16_spacing():
    """At 1.0 the bf16 spacing is 2^-7; 500 updates of 1e-4 each are lost to rounding to nearest, and kept on average here."""
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.ones(1 << 14, dtype=torch.bfloat16))
    nearest = torch.nn.Parameter(torch.ones(1 << 14, dtype=torch.bfloat16))
    master = torch.nn.Parameter(torch.ones(1 << 14))
    ours = StochasticRoundingAdamW([weights], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    plain = torch.optim.AdamW([nearest], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    reference = torch.optim.AdamW([master], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    for _ in range(500):
        for param, optimizer in ((weights, ours), (nearest, plain), (master, reference)):
            param.grad = torch.ones_like(param)
            optimizer.step()
    assert torch.all(nearest == 1.0)
    assert weights.float().mean().item() == pytest.approx(master.mean().item(), abs=2e-4)
    assert ours.state[weights]["exp_avg"].dtype == torch.float32


def test_bf16_weights_train_and_resume_exactly(tiny_llama, corpus_file, tmp_path):
    def config(out):
        return run_config(tiny_llama, corpus_file, out, max_steps=8, eval_every=3, keep_last=10, precision="bf16", weights="bf16")

    summary = train(config(tmp_path / "whole"))
    assert summary["best_val_loss"] < summary["base_val_loss"]
    checkpoint = sorted((tmp_path / "whole" / "checkpoints").glob("step-*"))[-1]
    assert {t.dtype for t in load_file(checkpoint / "trainable.safetensors").values()} == {torch.bfloat16}
    cut_run(tmp_path / "whole", tmp_path / "cut", last_step=3)
    train(config(tmp_path / "cut"), resume=True)  # the fp32 moments come back as fp32
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), abs=1e-6)


def test_bf16_weights_need_bf16_precision(tiny_llama, corpus_file, tmp_path, capsys):
    code = main(["train", "--model", str(tiny_llama), "--data", str(corpus_file), "--block-size", "32", "--out", str(tmp_path / "r"),
                 "--set", "train.weights=bf16", "--set", "train.precision=fp32"])
    assert code == 2
    assert "train.weights: bf16 needs train.precision bf16" in capsys.readouterr().err


def test_compiling_on_a_cpu_waits_for_a_run_long_enough_to_repay_it():
    assert seconds_saved("lora", step_seconds=3.0, steps_left=100) < 0  # 300 s of steps save 37 s, compiling costs more
    assert seconds_saved("lora", step_seconds=3.0, steps_left=1000) > 0
    assert seconds_saved("freeze", 3.0, 1000) == seconds_saved("full", 3.0, 1000)  # unmeasured: full's figures

    class Runner:
        compiled = False

        def compile(self):
            self.compiled = True

    short, long = Runner(), Runner()
    for runner, total in ((short, 50), (long, 5000)):
        watcher = CompileWhenItRepays(runner, total, "lora", log=lambda _: None)
        for step, seconds in enumerate([30.0, 4.0, 4.0, 4.0], start=1):
            watcher.step_done(step, seconds)
    assert not short.compiled and long.compiled
