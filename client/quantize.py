"""Low-peak loading of frozen backbones, optionally quantized with bitsandbytes.

QLoRA (Dettmers et al., 2023, arXiv:2305.14314) stores each frozen ``nn.Linear`` weight
``W (out, in)`` in 4 bits (NF4 or FP4, absmax per block of 64, optionally the absmax
quantized again: "double quant") and computes ``y = x @ dequant(W).T + b`` in fp32;
LLM.int8() (Dettmers et al., 2022, arXiv:2208.07339) stores ``W`` row-wise in int8 with
one fp scale per row. Gradients flow through the frozen layer to its input, so PEFT
layers (LoRA) on top of it train.

Why not ``from_pretrained(quantization_config=...)``: on CPU it materialised the fp32
model before quantizing and peaked above the fp32 load. Here the model skeleton is built
on the meta device, its ``nn.Linear`` layers are swapped for bitsandbytes layers, and the
safetensors checkpoint is streamed one tensor at a time with plain reads (no ``mmap``:
touched mapped pages count towards RSS until the file is closed); each Linear weight is
quantized as it arrives and its fp32 copy dropped. Peak = quantized model + one tensor.

Head modules (``classifier``, ``score``, ``lm_head``) are never quantized: they stay fp32
so that they can be trained (PEFT ``modules_to_save``) or, for ``lm_head``, share the
fp32 input embedding.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

ALWAYS_FP32 = ("lm_head",)  # module names never quantized, whatever the task

_TRIM_EVERY = 16 << 20  # bytes of fp32 weights quantized between two malloc_trim calls
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


class _DropMessages(logging.Filter):
    """Drop known-harmless bitsandbytes log lines that would repeat on every call."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in str(record.msg) for f in self.fragments)


def _silence_bnb_notes() -> None:
    """Silence known-harmless bitsandbytes log lines.

    The CPU backend tries to import the hub package ``kernels``, which this project's own
    ``kernels`` package shadows (bnb then falls back to its bundled kernels); int8
    matmuls on GPU note on every call that activations are cast to fp16 (that is
    LLM.int8()'s design).
    """
    for name, fragment in (("bitsandbytes.backends.cpu.ops", "kernels-community"),
                           ("bitsandbytes.autograd._functions", "will be cast from")):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in log.filters):
            log.addFilter(_DropMessages(fragment))


_silence_bnb_notes()  # before anything (peft, transformers) imports bitsandbytes


def _bnb():
    """Import bitsandbytes lazily (it is slow to import and optional for ``quant=none``)."""
    import bitsandbytes as bnb  # noqa: PLC0415

    return bnb


# --------------------------------------------------------------------------- layers


def _skipped(name: str, skip: Iterable[str]) -> bool:
    """True when any dotted component of module ``name`` is in ``skip``."""
    parts = name.split(".")
    return any(s in parts for s in skip)


def under(name: str, prefixes: Iterable[str]) -> bool:
    """True when ``name`` is one of the qualified module names ``prefixes`` or inside one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def make_quantized_linear(linear: nn.Linear, mode: str, double_quant: bool = False) -> nn.Module:
    """A bitsandbytes layer shaped like ``linear``, weight still empty (meta).

    Parameters
    ----------
    linear : nn.Linear
        Source layer; only its shape and whether it has a bias are used.
    mode : {"int8", "nf4", "fp4"}
    double_quant : bool
        4-bit only: quantize the per-block absmax statistics too (saves ~0.4 bit/weight).
    """
    bnb = _bnb()
    has_bias = linear.bias is not None
    if mode == "int8":
        layer = frozen_linear8bit_class()(linear.in_features, linear.out_features, bias=has_bias,
                                          has_fp16_weights=False, threshold=0.0, device="meta")
    elif mode in ("nf4", "fp4"):
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                  compute_dtype=torch.float32, compress_statistics=double_quant,
                                  quant_type=mode, device="meta")
        # bnb's CPU inference fast path repacks the weight for a bf16 kernel that has no
        # backward; once repacked, training forwards would silently lose input gradients.
        layer.support_avx512bf16_for_cpu = False
    else:
        raise ValueError(f"quant mode {mode!r} has no quantized layer; expected int8, nf4 or fp4")
    return layer


class _FrozenInt8Linear(torch.autograd.Function):
    """``y = x @ W.T + b`` with ``W = CB * SCB / 127`` frozen (LLM.int8() row-wise format).

    Saves no activation: the backward needs only ``W`` (recomputed from ``CB``, ``SCB``),
    since neither ``W`` nor ``b`` is trained. bnb's own CPU training path keeps every
    input alive on ``ctx`` (outside ``save_for_backward``, so activation checkpointing
    cannot drop it either), which cost more memory than the fp32 model saves.
    """

    @staticmethod
    def forward(ctx, x, cb, scb, bias):  # x (..., in), cb (out, in) int8, scb (out,)
        ctx.save_for_backward(cb, scb)
        ctx.bias_grad = bias is not None and bias.requires_grad
        w = cb.to(x.dtype) * (scb.to(x.dtype) / 127.0).unsqueeze(1)  # (out, in)
        return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):  # grad (..., out)
        cb, scb = ctx.saved_tensors
        w = cb.to(grad.dtype) * (scb.to(grad.dtype) / 127.0).unsqueeze(1)  # (out, in)
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.bias_grad else None
        return grad @ w, None, None, grad_bias


@functools.cache
def frozen_linear8bit_class() -> type:
    """``bnb.nn.Linear8bitLt`` whose CPU forward dequantizes the frozen int8 weight to fp32.

    Same storage, state dict and PEFT dispatch as bitsandbytes' class; on CPU both train
    and eval compute ``x @ dequant(W).T`` in the input dtype (bnb's eval path would also
    quantize activations to int8, and its train path holds every input in memory).
    """
    bnb = _bnb()

    class FrozenLinear8bitLt(bnb.nn.Linear8bitLt):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.device.type != "cpu":
                return super().forward(x)
            if self.weight.CB is not None:
                self.init_8bit_state()  # bnb moves CB/SCB from the weight to self.state
            return _FrozenInt8Linear.apply(x, self.state.CB, self.state.SCB, self.bias)

    return FrozenLinear8bitLt


def set_quantized_weight_(layer: nn.Module, weight: torch.Tensor) -> None:
    """Quantize ``weight`` (out, in) into bitsandbytes ``layer`` on the CPU."""
    bnb = _bnb()
    w = weight.detach().to(torch.float32).contiguous()  # (out, in)
    if isinstance(layer, bnb.nn.Linear8bitLt):
        # Int8Params._quantize would round to fp16 first (slow on CPU); bnb's row-wise
        # quantizer takes fp32 directly: CB = round(127 * W / SCB), SCB = max_j |W_ij|.
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(w)  # (out, in) int8, (out,) fp32
        param = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False)
        param.CB, param.SCB = cb, scb
        layer.weight = param
    else:
        old = layer.weight
        param = bnb.nn.Params4bit(w, requires_grad=False, blocksize=old.blocksize,
                                  compress_statistics=old.compress_statistics,
                                  quant_type=old.quant_type, quant_storage=old.quant_storage, module=layer)
        layer.weight = param._quantize("cpu")


def quantize_linear(linear: nn.Linear, mode: str, double_quant: bool = False) -> nn.Module:
    """The bitsandbytes counterpart of ``linear``: quantized now if its weight is
    materialised, else (meta) left empty for :func:`load_checkpoint_`. Bias stays fp32."""
    layer = make_quantized_linear(linear, mode, double_quant)
    if not linear.weight.is_meta:
        set_quantized_weight_(layer, linear.weight)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().to(torch.float32), requires_grad=False)
    return layer


def replace_linear_layers_(model: nn.Module, mode: str, double_quant: bool = False,
                           skip: Iterable[str] = (), absent: Iterable[str] = ()) -> list[str]:
    """Swap every ``nn.Linear`` not under ``skip`` (or ``lm_head``) for a bitsandbytes layer.
    Modules under the qualified names ``absent`` (left out of a model part) stay as they are.

    Materialised weights are quantized at once (the fp32 layer is freed as it is
    replaced); weights on the meta device are left for :func:`load_checkpoint_`.

    Returns
    -------
    list[str]
        Qualified names of the replaced layers.
    """
    skip, absent = tuple(skip) + ALWAYS_FP32, tuple(absent)
    targets = [(n, m) for n, m in model.named_modules()
               if type(m) is nn.Linear and not _skipped(n, skip) and not under(n, absent)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, quantize_linear(linear, mode, double_quant))
        del linear
    # what transformers sets after a bnb load; PEFT reads it to pick its bnb LoRA layers
    model.is_loaded_in_8bit, model.is_loaded_in_4bit = mode == "int8", mode in ("nf4", "fp4")
    return [n for n, _ in targets]


# --------------------------------------------------------------------------- checkpoints


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a Hugging Face model folder (single file or sharded)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def iter_safetensors(path: str | Path, select: Callable[[str], bool] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` from a safetensors file, reading one tensor at a time
    (only those whose name ``select`` accepts, when given; the others are never read).

    Each tensor lives in its own freshly allocated buffer (plain ``readinto``, no mmap),
    so the caller controls the peak: drop the tensor and its memory is gone.
    """
    with open(path, "rb", buffering=0) as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        base = 8 + header_len
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if select is not None and not select(name):
                continue
            start, end = info["data_offsets"]
            buf = torch.empty(end - start, dtype=torch.uint8)  # (nbytes,)
            view, got = memoryview(buf.numpy()), 0
            f.seek(base + start)
            while got < end - start:
                n = f.readinto(view[got:])
                if not n:
                    raise OSError(f"{path}: truncated while reading tensor {name!r}")
                got += n
            yield name, buf.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
            del buf, view


def _target_key(name: str, keys: set[str], prefix: str) -> str | None:
    """Map a checkpoint key onto the model's state-dict keys (base-model prefix, legacy names)."""
    legacy = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    for cand in (name, legacy):
        if cand in keys:
            return cand
        if prefix and f"{prefix}.{cand}" in keys:
            return f"{prefix}.{cand}"
        if prefix and cand.startswith(prefix + ".") and cand[len(prefix) + 1:] in keys:
            return cand[len(prefix) + 1:]
    return None


@dataclass
class LoadReport:
    """What :func:`load_checkpoint_` did: keys loaded, ignored, and freshly initialised."""

    loaded: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    initialized: list[str] = field(default_factory=list)


def _assign_(model: nn.Module, key: str, tensor: torch.Tensor, quantized: set[str]) -> None:
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name)
    current = getattr(module, attr)
    if tuple(current.shape) != tuple(tensor.shape):
        raise RuntimeError(f"checkpoint tensor {key!r} has shape {tuple(tensor.shape)}, "
                           f"the model expects {tuple(current.shape)}")
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float32)  # frozen backbones compute in fp32 on CPU
    if module_name in quantized and attr == "weight":
        set_quantized_weight_(module, tensor)
    elif attr in module._parameters:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def _meta_tensors(model: nn.Module) -> list[str]:
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return [n for n, t in named if t.is_meta]


def load_checkpoint_(model: nn.Module, files: Iterable[str | Path], heads: Iterable[str] = (),
                     quantized: Iterable[str] = (), absent: Iterable[str] = ()) -> LoadReport:
    """Stream safetensors ``files`` into a (partly) meta ``model``, quantizing on the fly.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Skeleton with parameters on the meta device (buffers may be real).
    files : paths of safetensors shards.
    heads : module names that may be missing from the checkpoint (a new
        classification head); they are initialised with the model's ``_init_weights``
        under a fixed seed in a forked RNG (global RNG state untouched).
    quantized : qualified names of bitsandbytes layers awaiting their weights.
    absent : qualified names of modules left out of this model part (split training):
        their tensors are never read and they stay on the meta device.

    Raises
    ------
    RuntimeError
        When a non-head weight is missing after the load, or a shape does not match.
    """
    heads, quantized, absent = tuple(heads), set(quantized), tuple(absent)
    keys = {k for k in model.state_dict(keep_vars=True) if not under(k, absent)}
    prefix = getattr(model, "base_model_prefix", "")
    report, freed = LoadReport(), 0

    def wanted(name: str) -> bool:
        if _target_key(name, keys, prefix) is not None:
            return True
        report.unexpected.append(name)
        return False

    for path in files:
        for name, tensor in iter_safetensors(path, wanted):
            key = _target_key(name, keys, prefix)
            _assign_(model, key, tensor, quantized)
            report.loaded.append(key)
            if key.rpartition(".")[0] in quantized:
                freed += tensor.numel() * 4
            del tensor
            if freed >= _TRIM_EVERY:
                # the quantizer's fp32 temporaries fragment the heap; without a trim the
                # freed pages stay resident and the peak grows to the fp32 model size
                release_memory(collect=False)
                freed = 0
    if getattr(model, "all_tied_weights_keys", None):
        model.tie_weights()
    missing = [n for n in _meta_tensors(model) if not under(n, absent)]
    head_missing = [n for n in missing if _skipped(n, heads)]
    others = [n for n in missing if n not in head_missing]
    if others:
        raise RuntimeError(f"checkpoint lacks {len(others)} weights of {type(model).__name__}: "
                           f"{', '.join(others[:8])}{' ...' if len(others) > 8 else ''}")
    for head in {h for h in heads if any(_skipped(n, (h,)) for n in head_missing)}:
        init_module_(model, model.get_submodule(head))
        report.initialized.append(head)
    if report.unexpected:
        logger.info("ignored %d checkpoint tensors not used by %s (e.g. %s)", len(report.unexpected),
                    type(model).__name__, report.unexpected[0])
    return report


def init_module_(model: nn.Module, module: nn.Module, seed: int = 0) -> None:
    """Materialise ``module`` on the CPU and initialise it the way ``model`` would, seeded."""
    module.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for sub in module.modules():
                model._init_weights(sub)
    for p in module.parameters():
        p.requires_grad_(False)


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (musl, macOS)
        return None


def release_memory(collect: bool = True) -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), after a GC if ``collect``."""
    if collect:
        gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
