"""FlopCount: the matrix products a call ran, forward and backward, cached per shape."""

import torch

from client.flops import FlopCount


def test_linear_forward_and_backward():
    layer = torch.nn.Linear(32, 16, bias=False)
    x = torch.randn(8, 32)
    with FlopCount() as fc:
        layer(x)
    assert fc.total == 2 * 8 * 32 * 16
    with FlopCount() as fc:
        layer(x).sum().backward()
    assert fc.total == 2 * 8 * 32 * 16 * 2  # the weight's gradient (x needs none)


def test_counts_every_call_and_matches_torch_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model = torch.nn.Sequential(torch.nn.Linear(20, 40), torch.nn.ReLU(), torch.nn.Linear(40, 3))
    x = torch.randn(5, 20, requires_grad=True)
    with FlopCount() as fc:
        for _ in range(3):
            model(x).sum().backward()
    with FlopCounterMode(display=False) as ref:
        for _ in range(3):
            model(x).sum().backward()
    assert fc.total == ref.get_total_flops() > 0
