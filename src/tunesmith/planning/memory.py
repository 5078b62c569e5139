"""Peak training memory of a model shape, found by running tunesmith's own training step on fake tensors.

Fake tensors carry shapes, dtypes and devices but no data, so a step of GPT-2 XL costs seconds and no
memory. Every storage the step creates is counted while it lives: the weights, the gradients, AdamW's
state, the activations autograd saves and the temporaries of the fused loss, in the order they occur.
The step is that of training (autocast, SDPA, the fused output loss, the method's frozen parts), so
what the estimate counts is what the run allocates. Whole models are not simulated: the peak is
linear in the number of blocks, in the micro-batch and in their product, so four steps of one- and
two-block copies of the shape give it for any depth and micro-batch (six for `freeze`, whose frozen
blocks cost less than trained ones).

On a CPU what counts is the process's resident memory, since the kernel kills a process that outgrows the
machine: `as_resident` adds what a training process holds besides its tensors (the runtime, and the heap the
allocator keeps around activations) and the peaks of loading the weights and of exporting the model.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from dataclasses import dataclass, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..config import ModelConfig
from ..methods import method_of

ADAMW_BYTES = 8  # exp_avg and exp_avg_sq in fp32 per trainable parameter
NF4_BYTES = 0.5 + 0.127 / 8 * 4  # 4-bit weights plus double-quantized block constants (QLoRA paper: 0.127 bits/param)
# A CPU training process besides its tensors: fitted (smallest largest error) to the peak RSS of `tunesmith train` runs of
# SmolLM2-135M and a 1.17B Llama, full, LoRA and freeze, fp32 (benchmarks/bench_memory.py --large; RESULTS.md, 2026-12-04)
RUNTIME_BYTES = 0.4 * 2**30  # the interpreter, torch, transformers, the tokenizer and the data (0.41 GiB measured before the model loads)
ACTIVATION_SLACK = 0.5  # per byte of activations at the peak: freed temporaries of forward and backward that the heap keeps


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of every storage created under it, from creation until it is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._refs:
            return
        size = storage.nbytes()

        def freed(_ref, key=key, size=size) -> None:
            self.live -= size
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, freed)
        self.live += size
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out


@dataclass(frozen=True)
class StepShape:
    """What a simulated step needs besides the model config."""

    method: str = "full"  # full, freeze, lora (qlora is derived from lora)
    block_size: int = 256
    precision: str = "bf16"  # the autocast dtype of training: bf16, fp16 or fp32
    classifier_labels: int = 0  # a sequence-classification head with this many labels (task classify, method head)
    gradient_checkpointing: bool = False
    lora_rank: int = 8
    weights: str = "fp32"  # train.weights: fp32 masters, or bf16 weights
    train_last_layers: int | None = None  # with freeze: the top blocks trained (None: the top quarter, as `recommend` configures it)


def _on_fake_tensors(model: torch.nn.Module) -> None:
    """Give every meta parameter and buffer a tensor made now: under the simulation's modes, a fake one that is counted.

    The model is built (and its adapters added) on the meta device first: peft moves and copies modules as it
    adds adapters, which meta tensors allow and fake ones do not (a fake parameter cannot be swapped in place).
    """
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None:
                module._parameters[name] = torch.nn.Parameter(torch.empty(parameter.shape, dtype=parameter.dtype),
                                                              requires_grad=parameter.requires_grad)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = torch.zeros(buffer.shape, dtype=buffer.dtype)


def _with_layers(config, layers: int):
    """A copy of the config with `layers` blocks (and per-layer lists cut to match)."""
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        try:
            config.layer_types = config.layer_types[:layers]
        except AttributeError:  # a config that derives its layer types from the layer count (Mamba's) follows it
            pass
    return config


def _build(config, shape: StepShape):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    factory = AutoModelForCausalLM
    if shape.classifier_labels:
        config = copy.deepcopy(config)
        config.num_labels = shape.classifier_labels
        config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        factory = AutoModelForSequenceClassification
    try:
        return factory.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    except ValueError as exc:  # an architecture without SDPA (GPT-Neo, Mamba) trains with its own attention, as loading does
        if "scaled_dot_product_attention" not in str(exc):
            raise
        return factory.from_config(config, dtype=torch.float32, attn_implementation="eager")


def _model_on_meta(config, shape: StepShape, method: ModelConfig) -> torch.nn.Module:
    """The model as training holds it (the method applied, each parameter in its stored dtype), on the meta device."""
    from ..methods import apply_method, storage_dtypes
    from ..models.weights import store_weights

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and fan-in notices from building throwaway models
        model = apply_method(_build(config, shape), method)
    store_weights(model, *storage_dtypes(method.method, shape.weights, shape.precision))
    return model


def simulate_peak(config, shape: StepShape, layers: int, trained_layers: int, micro_batch: int) -> int:
    """Peak bytes of two optimizer steps of a `layers`-block copy of the model (the top `trained_layers` trained with freeze)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..batch import Batch
    from ..training.fused_loss import training_loss
    from ..training.optim import StochasticRoundingAdamW
    from ..training.step import forward_backward

    method = ModelConfig(method=shape.method, train_last_layers=trained_layers if method_of(shape.method).top_blocks else None,
                         lora_rank=shape.lora_rank, gradient_checkpointing=shape.gradient_checkpointing)
    model = _model_on_meta(_with_layers(config, layers), shape, method)
    counter = _LiveBytes()
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    fake.cache_enabled = False  # its dispatch cache can crash when one process simulates many models; it saves little here
    with fake, warnings.catch_warnings(), counter:
        warnings.simplefilter("ignore")
        _on_fake_tensors(model)
        model.train()
        loss = training_loss(model, fuse=not shape.classifier_labels)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = StochasticRoundingAdamW(trainable, lr=1e-4) if shape.weights == "bf16" else torch.optim.AdamW(trainable, lr=1e-4, fused=True)
        ids = torch.zeros((micro_batch, shape.block_size), dtype=torch.long)
        classes = torch.zeros((micro_batch,), dtype=torch.long) if shape.classifier_labels else None
        mask = torch.ones_like(ids) if shape.classifier_labels else None
        batch = Batch(ids, attention_mask=mask, classes=classes)
        for _ in range(2):  # the second step holds AdamW's state besides everything the first one did
            forward_backward(loss, batch, 1.0, None, torch.device("cpu"), shape.precision)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return counter.peak


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training run's peak, by part."""

    weights: int
    gradients: int
    optimizer: int
    activations: int  # activations and temporaries at the peak: the rest of the tensors
    process: int = 0  # a CPU process's resident memory besides its tensors at its peak (see `as_resident`)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.process


@dataclass(frozen=True)
class MemoryModel:
    """The simulated peak as a function of the micro-batch, with exact parameter counts."""

    params: int
    trainable: int
    matrices: int  # parameters of the blocks' weight matrices (what a 4-bit base quantizes)
    weights: int  # bytes of all weights as training holds them
    fixed: float  # bytes that do not grow with the micro-batch (weights, gradients, optimizer state, ...)
    per_sequence: float  # bytes each sequence of the micro-batch adds
    gradient_bytes: int = 4  # per trainable parameter: its stored dtype's size
    resident: bool = False  # estimate the process's resident memory (a CPU run), not its tensors alone

    def estimate(self, micro_batch: int) -> MemoryEstimate:
        gradients = self.trainable * self.gradient_bytes
        optimizer = self.trainable * ADAMW_BYTES
        rest = max(int(self.fixed + self.per_sequence * micro_batch) - self.weights - gradients - optimizer, 0)
        tensors = MemoryEstimate(self.weights, gradients, optimizer, rest)
        if not self.resident:
            return tensors
        fp32_copy = 4 * self.params  # every weight is loaded in fp32 first, and a base stored in 16 bits is exported from a fresh fp32 copy
        training = tensors.total + ACTIVATION_SLACK * rest
        export = fp32_copy + self.weights + optimizer if self.weights < fp32_copy else 0
        peaks = [training, fp32_copy, export]
        return replace(tensors, process=int(RUNTIME_BYTES + max(peaks)) - tensors.total)

    def largest_micro_batch(self, budget: float, limit: int) -> int:
        """The largest power of two up to `limit` whose peak fits in `budget` bytes; 0 when not even 1 does."""
        size = 0
        while size * 2 <= limit and self.estimate(size * 2 if size else 1).total <= budget:
            size = size * 2 if size else 1
        return size


def _counts(config, shape: StepShape, trained_layers: int | None) -> tuple[int, int, int, int, int]:
    """Parameters of the whole model, counted on the meta device: all, trainable, the blocks' matrices; the bytes
    of all weights as stored, and of one trainable parameter."""
    from ..models.weights import transformer_blocks

    model = _model_on_meta(config, shape, ModelConfig(method=shape.method, train_last_layers=trained_layers, lora_rank=shape.lora_rank))
    matrices = sum(p.numel() for name, p in transformer_blocks(model).named_parameters() if p.ndim == 2 and "lora_" not in name)
    params = list(model.parameters())
    trained = [p for p in params if p.requires_grad]
    return (sum(p.numel() for p in params), sum(p.numel() for p in trained), matrices,
            sum(p.numel() * p.element_size() for p in params), trained[0].element_size() if trained else 4)


def trained_layers(config, method: str) -> int | None:
    """The blocks that train as `recommend` configures the method (None: the method does not count blocks)."""
    return method_of(method).default_trained_layers(config)


def fit_memory(config, shape: StepShape) -> MemoryModel:
    """`_fit_memory`, simulated once per model shape and step shape in a process: a fit costs seconds, and a process
    that plans more than once (the web UI's server, a sweep's worker checking each trial, `recommend` with and without
    a cheaper method) asks about the same shapes again. The key is the config's class and every value it holds."""
    key = (type(config), config.to_json_string(use_diff=False), shape)
    if key not in _FITTED:
        if len(_FITTED) >= FITS_KEPT:
            _FITTED.clear()
        _FITTED[key] = _fit_memory(copy.deepcopy(config), shape)  # a simulation may set attributes on the config it reads
    return _FITTED[key]


FITS_KEPT = 256
_FITTED: dict[tuple, MemoryModel] = {}  # MemoryModel is immutable, so a fit is shared safely


def _fit_memory(config, shape: StepShape) -> MemoryModel:
    """The peak for the whole depth, from steps of one- and two-block copies at micro-batches 1 and 2.

    peak = fixed + s·B + trained·(b + d·B) + frozen·(f + g·B), with B the micro-batch: four steps give
    fixed, s, b and d; for freeze two more (a frozen block under a trained one) give f and g.
    """
    method = method_of(shape.method)
    base = replace(shape, method=method.unquantized)
    s = {(layers, micro): simulate_peak(config, base, layers, layers, micro) for layers in (1, 2) for micro in (1, 2)}
    d = (s[2, 2] - s[1, 2]) - (s[2, 1] - s[1, 1])
    b = s[2, 1] - s[1, 1] - d
    per_sequence = s[1, 2] - s[1, 1] - d
    fixed = s[1, 1] - b - per_sequence - d
    layers = config.num_hidden_layers
    trained = min(shape.train_last_layers or method.default_trained_layers(config) or layers, layers)
    fixed += trained * b
    per_sequence += trained * d
    if trained < layers:
        one, two = simulate_peak(config, base, 2, 1, 1), simulate_peak(config, base, 2, 1, 2)
        g = (two - one) - (s[1, 2] - s[1, 1])
        f = one - s[1, 1] - g
        fixed += (layers - trained) * f
        per_sequence += (layers - trained) * g
    params, trainable, matrices, weights, gradient_bytes = _counts(config, base, trained if method.top_blocks else None)
    model = MemoryModel(params, trainable, matrices, weights, fixed, per_sequence, gradient_bytes)
    return as_qlora(model) if method.quantized_base else model


def as_resident(model: MemoryModel) -> MemoryModel:
    """The same run on a CPU: its estimates are of the process's resident memory, what the kernel weighs."""
    return replace(model, resident=True)


def as_qlora(lora: MemoryModel) -> MemoryModel:
    """QLoRA from the LoRA steps (bitsandbytes runs on CUDA only): the blocks' matrices in NF4, the rest in bf16."""
    weights = int(lora.matrices * NF4_BYTES + (lora.params - lora.matrices) * 2)
    fixed = lora.fixed - lora.weights + weights
    return MemoryModel(lora.params, lora.trainable, lora.matrices, weights, fixed, lora.per_sequence, lora.gradient_bytes, lora.resident)


def frozen_copy_bytes(cfg, params: int, method: str | None = None) -> int:
    """The weights of the frozen copies of the model a run of `method` (the config's own by default) holds beside it (a
    KL reference without adapters to switch off), stored as the model's own weights are."""
    from ..tasks import task_kind

    if method is not None:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"method": method})})
    return task_kind(cfg).frozen_copies(cfg) * params * (4 if cfg.train.weights == "fp32" else 2)

