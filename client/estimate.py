"""Pre-flight estimate of a client's peak memory and work, without loading a weight.

For one configuration (model, ``quant``, method and its options, batch size, local
steps) :func:`estimate` builds the backbone and the method on the meta device
(:func:`client.backbones.skeleton_only`: shapes only, nothing allocated), runs one
training step of the method on a meta batch of the configured shape, and records:

- ``step_mb``: the peak of the tensors alive during that step (activations kept for
  the backward pass, gradients, temporaries), from a dispatch mode that adds each new
  storage's bytes and subtracts them when it is freed (:class:`LiveBytes`);
- ``flops_per_step``: what the step computes (:class:`client.flops.FlopCount`, the
  same count the simulated device clock uses).

The peak resident memory of a train call is then::

    peak = runtime + weights + optimizer + copies + step + dequant

``runtime``: the process before the model (interpreter, libraries, data pipeline,
thread pools), measured once per data set-up by :func:`runtime_mb`. ``weights``: every parameter and
buffer of the model part the client holds, at 4 bytes, except the Linear layers that
``quant`` replaces: nf4/fp4 at 0.5 byte per weight plus one fp32 scale per 64 (double
quantization: one byte per 64), int8 at 1 byte plus one fp32 scale per row.
``optimizer``: AdamW's two moments (SGD with momentum: one) of the trainable tensors.
``copies``: three copies of the trainable state (the global state received, the kept
initial state, the reply). ``dequant``: a quantized layer is de-quantized to fp32 for
its product, so the largest one is added once.

The batch is the worst case of the configuration: ``batch_size`` rows of
``model.max_length`` tokens (real batches are trimmed to their longest row). Sequences
are not masked (memory does not depend on the values), and any value read back from a
tensor during tracing reads as one. The zeroth-order methods trace their forward under
``no_grad`` (two forwards per step); forward gradients count three forwards' FLOPs and
a forward's live memory (their measured peak is zo_seed's). ``anther-bench estimate`` checks
every figure against the measured peak of a real train call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from strategies import wire

MB = 2**20
ANSWER_TOKENS = 4  # causal LM: the positions whose logits the loss reads (answer and eos)
NF4_BLOCK = 64
ZO_FORWARDS_PER_STEP = 2
FWD_GRAD_FORWARDS_PER_STEP = 3


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes() as lb: ...``: ``lb.peak`` is the most bytes of tensors created
    inside that were alive at once (views and in-place results share their storage and
    add nothing). Works on meta tensors; a value read back (``.item()``, a bool test)
    on a meta tensor reads as one, and a copy from a meta tensor into a real one copies
    nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[StorageWeakRef, int] = {}
        self.current = 0
        self.peak = 0

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ref = StorageWeakRef(storage)
        if ref in self.live:
            return
        n = storage.nbytes()
        self.live[ref] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, ref)

    def _free(self, ref: StorageWeakRef) -> None:
        self.current -= self.live.pop(ref, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            dtype = args[0].dtype
            return True if dtype == torch.bool else (1.0 if dtype.is_floating_point else 1)
        if func is torch.ops.aten.copy_.default and args[1].device.type == "meta" != args[0].device.type:
            return args[0]  # a real tensor initialised from the meta model (e.g. prefixes from text): shapes only
        out = func(*args, **(kwargs or {}))
        inputs = {StorageWeakRef(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:  # a view or an in-place result shares an input's storage: nothing new
            if isinstance(t, torch.Tensor) and StorageWeakRef(t.untyped_storage()) not in inputs:
                self._track(t)
        return out


@dataclass(frozen=True)
class Estimate:
    """A client's predicted peak memory (MiB) and work for one train call."""

    runtime_mb: float
    weights_mb: float
    optimizer_mb: float
    copies_mb: float
    step_mb: float
    dequant_mb: float
    flops_per_step: float
    steps: int
    trainable: int
    reply_bytes: int

    @property
    def peak_mb(self) -> float:
        return (self.runtime_mb + self.weights_mb + self.optimizer_mb + self.copies_mb + self.step_mb
                + self.dequant_mb)

    @property
    def flops(self) -> float:
        """FLOPs of one train call (all its local steps)."""
        return self.flops_per_step * self.steps

    def as_dict(self) -> dict[str, float]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {**out, "peak_mb": self.peak_mb, "flops": self.flops}


def _dummy_batch(task: str, batch: int, length: int) -> dict[str, Any]:
    ids = torch.zeros(batch, length, dtype=torch.long, device="meta")
    mask = torch.ones(batch, length, dtype=torch.long, device="meta")
    if task == "classification":
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(batch, dtype=torch.long, device="meta")}
    return {"input_ids": ids, "attention_mask": mask, "position_ids": ids.clone(),
            "labels": torch.zeros(batch, ANSWER_TOKENS, dtype=torch.long, device="meta"),
            "logits_to_keep": ANSWER_TOKENS}


def _quantized_linears(backbone: Any) -> list[torch.nn.Linear]:
    """The Linear layers ``quant`` replaces (:func:`client.quantize.replace_linear_layers_`)."""
    from client import quantize as q

    skip = tuple(backbone.head_modules) + q.ALWAYS_FP32
    return [m for n, m in backbone.model.named_modules()
            if type(m) is torch.nn.Linear and not q._skipped(n, skip) and not q.under(n, backbone.absent)]


def _weights_bytes(model: torch.nn.Module, backbone: Any, quant: Any) -> tuple[int, int]:
    """(resident bytes of the model part held, fp32 bytes of its largest quantized weight)."""
    absent = tuple(backbone.absent)
    quantized = {id(m.weight): m for m in _quantized_linears(backbone)} if quant.mode != "none" else {}
    seen: set[int] = set()
    total = largest = 0
    named = list(model.named_parameters(remove_duplicate=True)) + list(model.named_buffers(remove_duplicate=True))
    for name, t in named:
        if id(t) in seen or any(f".{a}." in f".{name}" for a in absent if a):  # under an absent module
            continue
        seen.add(id(t))
        n = t.numel()
        if id(t) in quantized:
            largest = max(largest, n * 4)
            if quant.mode == "int8":
                total += n + quantized[id(t)].out_features * 4
            else:
                total += n // 2 + (n // NF4_BLOCK) * (1 if quant.double_quant else 4)
        else:
            total += n * t.element_size()
    return total, largest


@contextmanager
def cpu_attention() -> Iterator[None]:
    """Within the block, scaled-dot-product attention on meta tensors runs the CPU flash
    kernel's meta function (what a real CPU step runs: no (B, H, S, S) probabilities
    kept), not the math fallback the meta device would pick."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if q.device.type != "meta":
            return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                            enable_gqa=enable_gqa)
        if enable_gqa and k.shape[-3] != q.shape[-3]:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _trace_step(method: Any, batch: dict[str, Any]) -> tuple[int, float]:
    """(peak live bytes, FLOPs) of one step of ``method`` on ``batch``."""
    from client.batches import forward_loss
    from client.flops import FlopCount

    kind = method.kind
    with cpu_attention(), FlopCount() as fc, LiveBytes() as lb:
        if kind == wire.KIND_ACTIVATIONS:
            hidden = method.front(batch)
            method.backward_front(hidden, torch.ones_like(hidden))
            forwards = 1
        elif kind == wire.KIND_SEEDS:
            with torch.no_grad():
                forward_loss(method.model, batch)
            jvp = type(method).__name__ == "ForwardGradMethod"  # its peak: zo_seed's (measured)
            forwards = FWD_GRAD_FORWARDS_PER_STEP if jvp else ZO_FORWARDS_PER_STEP
        else:
            model = method.model
            model.train()
            loss, _ = forward_loss(model, batch)
            loss.backward()
            model.eval()
            forwards = 1
    return lb.peak, fc.total * forwards


def _optimizer_factor(cfg: Any) -> int:
    m = cfg.method
    if getattr(m, "optimizer", None) is None:
        return 0
    if m.optimizer == "sgd":
        return 1 if m.momentum else 0
    return 2


def tiny_call_peak(cfg: Any) -> float:
    """Peak RSS (MiB) of one real train call of a tiny LoRA model on ``cfg``'s data and
    partition, in this process, through the ClientApp's handlers: the interpreter, the
    libraries, the data pipeline and the client's own overhead, with ~no model."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from flwr.supercore.task_identity import TaskIdentity

    from client.handlers import handle_query, handle_train
    from strategies.kinds.base import wire_record

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a node's process has set
    ctx = Context(run_id=1, node_id=1, node_config={wire.PARTITION_ID: 0}, state=RecordDict(), run_config={})
    init = Message(RecordDict({wire.CONFIG: ConfigRecord({"op": "init"})}), dst_node_id=1, message_type="query")
    state = handle_query(init, cfg, ctx).content[wire.ARRAYS]
    content = RecordDict({wire.ARRAYS: state, wire.WIRE: wire_record(wire.KIND_DELTA, "fp32"),
                          wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1})})
    reply = handle_train(Message(content, dst_node_id=1, message_type="train"), cfg, ctx)
    if reply.has_error():
        raise RuntimeError(reply.error.reason)
    return float(reply.content[wire.METRICS][wire.PEAK_RSS_MB])


def _tiny_variant(cfg: Any) -> Any:
    """``cfg`` with a tiny LoRA model of the same task head in place of its model."""
    from dataclasses import replace

    from client.config import ModelConfig, QuantConfig
    from client.methods import METHODS

    causal = cfg.model.task == "causal_lm" or cfg.model.name in ("smollm2-135m", "tiny-llama")
    model = ModelConfig(name="tiny-llama" if causal else "tiny-bert", task="causal_lm" if causal else "auto",
                        max_length=cfg.model.max_length)  # causal prompts need their room
    return replace(cfg, model=model, quant=QuantConfig(), method=METHODS["lora"].config(), batch_size=2, local_steps=1)


@lru_cache(maxsize=8)
def _runtime_of(flat_json: str) -> float:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
               ANTHER_NO_BACKBONE_CACHE="1")
    res = subprocess.run([sys.executable, "-m", "client.estimate", flat_json], capture_output=True, text=True,
                         cwd=root, env=env)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"measuring the client runtime baseline failed:\n{res.stderr[-2000:]}")
    return float(lines[-1])


def runtime_mb(cfg: Any) -> float:
    """What every client of ``cfg`` pays before its model (MiB): the peak of a fresh
    process's train call of a tiny model on the same data (:func:`tiny_call_peak`),
    measured once per data set-up (a subprocess, ~10 s)."""
    from strategies.runconfig import flatten

    return _runtime_of(json.dumps(flatten(_tiny_variant(cfg)), sort_keys=True, default=str))


def estimate(cfg: Any, num_labels: int, runtime: float | None = None) -> Estimate:
    """The pre-flight estimate of one train call of client config ``cfg`` (see the module
    docstring); ``runtime`` in MiB overrides the measured :func:`runtime_mb`. Raises the
    method's and the backbone's own config errors (e.g. BitFit without bias terms)."""
    from client.backbones import load_backbone, skeleton_only
    from client.methods import build_method

    with skeleton_only(), torch.random.fork_rng(devices=[]), LiveBytes():  # values read back during build: one
        backbone = load_backbone(cfg.model, cfg.quant, num_labels, cfg.method.prune())
        with torch.device("meta"):  # what the method adds (prefixes, adapters) is shapes only too
            method = build_method(cfg.method.name, backbone, cfg)
        model = getattr(method, "model", None) or backbone.model
        trainable = [p for _, p in method.trainable_parameters()]
        n_train = sum(p.numel() for p in trainable)
        weights, largest = _weights_bytes(model, backbone, cfg.quant)
        batch = _dummy_batch(backbone.task, cfg.batch_size, cfg.model.max_length)
        step, flops = _trace_step(method, batch)
    # local_epochs counts passes over the data, unknown here: one step per configured local step
    steps = cfg.method.steps(cfg.local_steps, max(cfg.batch_size, 1) * max(cfg.local_steps, 1), cfg.batch_size)
    train_bytes = n_train * 4
    delta = method.kind == wire.KIND_DELTA
    return Estimate(
        runtime_mb=runtime_mb(cfg) if runtime is None else float(runtime),
        weights_mb=weights / MB,
        optimizer_mb=_optimizer_factor(cfg) * train_bytes / MB if method.kind != wire.KIND_SEEDS else 0.0,
        copies_mb=(3 if delta else 1) * train_bytes / MB,
        step_mb=step / MB,
        dequant_mb=largest / MB,
        flops_per_step=float(flops),
        steps=int(steps),
        trainable=int(n_train),
        reply_bytes=train_bytes if delta else 0,
    )


if __name__ == "__main__":  # the runtime baseline's subprocess: python -m client.estimate '<flat config JSON>'
    from client.config import ClientConfig
    from strategies.runconfig import unflatten

    print(tiny_call_peak(unflatten(ClientConfig, json.loads(sys.argv[1]))))
