"""The ClientApp front (client/app.py) stays light: a node running Flower's own isolation
starts it once per message."""

from __future__ import annotations

import subprocess
import sys


def test_the_front_imports_flower_only():
    code = ("import sys, client.app; heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformers', 'peft', 'datasets', 'pandas', 'matplotlib', 'ray', 'simulation', 'server'}); "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
