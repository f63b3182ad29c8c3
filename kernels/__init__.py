"""Hot numeric primitives (seeded perturbation, multi-seed accumulation, update
quantization): a pure-torch reference per op plus faster backends.

Empty until the backprop-free methods land (issue: zeroth-order and forward-gradient
clients). Note: Hugging Face's optional ``kernels`` package shares this import name;
bitsandbytes probes ``from kernels import get_kernel`` on CPUs with AVX512-BF16 and
falls back to its own kernels when that fails, as it does offline anyway.
"""
