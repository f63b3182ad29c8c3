"""A client process imports neither plotting (through flwr-datasets) nor torch's compiler
(through bitsandbytes), and both still work when asked for (client/import_diet.py)."""

from __future__ import annotations

import subprocess
import sys

from client.import_diet import compile_at_first_call


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_a_client_partitions_and_quantizes_without_plotting_or_the_compiler():
    code = (
        "import sys, client, peft, bitsandbytes as bnb, torch\n"
        "from client.partitioners import DirichletConfig\n"
        "import flwr_datasets.partitioner\n"
        "w = torch.randn(64, 64)\n"
        "q, st = bnb.functional.quantize_4bit(w, quant_type='nf4')\n"
        "err = (bnb.functional.dequantize_4bit(q, st) - w).abs().max().item()\n"
        "print(sorted(m for m in ('matplotlib', 'seaborn', 'torch._inductor.compile_fx') if m in sys.modules), err < 1)"
    )
    assert _run(code) == "[] True"


def test_flwr_datasets_visualization_still_loads_on_use():
    code = ("import sys, client, flwr_datasets\n"
            "before = 'matplotlib' in sys.modules\n"
            "f = flwr_datasets.visualization.plot_label_distributions\n"
            "print(before, callable(f), 'matplotlib' in sys.modules)")
    assert _run(code) == "False True True"


def test_compile_is_called_once_with_the_same_arguments_at_the_first_call():
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return lambda *a: fn(*a) * 10

    deferred = compile_at_first_call(fake_compile)
    direct = deferred(lambda x: x + 1, dynamic=False)
    decorated = deferred(dynamic=True)(lambda x: x + 2)
    assert calls == []
    assert direct(1) == 20 and direct(2) == 30
    assert decorated(1) == 30
    assert calls == [{"dynamic": False}, {"dynamic": True}]
