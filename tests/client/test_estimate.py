"""The pre-flight estimate (client/estimate.py): the live-bytes tracer on known tensors,
the quantized weight accounting, and the estimate against the measured peak of a real
train call on the tiny models (the other models: `anther-bench estimate`)."""

import pytest
import torch

from benchmarks.estimate import case_config
from benchmarks.memory import run_child
from client.estimate import LiveBytes, estimate


def test_live_bytes_counts_new_storages_until_freed():
    with LiveBytes() as lb:
        a = torch.zeros(1024, device="meta")  # 4 KiB
        b = a.view(32, 32)  # a view: no new storage
        c = torch.empty(2048, device="meta")  # 8 KiB more: peak 12 KiB
        del c
        d = torch.empty(512, device="meta")  # after c was freed: 6 KiB live
        assert a.untyped_storage().nbytes() == 4096 and b.shape == (32, 32)
    assert lb.peak == 12 * 1024 and lb.current == 6 * 1024
    del d


def test_a_value_read_on_the_meta_device_reads_as_one():
    with LiveBytes():
        assert bool(torch.ones(3, device="meta").all()) is True
        assert torch.zeros(1, device="meta").item() == 1.0


def test_nf4_weights_are_an_eighth_of_fp32_and_activations_do_not_change():
    fp32 = estimate(case_config("tiny-llama", "none", "lora", 4, 32, 1), 4, runtime=0.0)
    nf4 = estimate(case_config("tiny-llama", "nf4", "lora", 4, 32, 1), 4, runtime=0.0)
    assert nf4.step_mb == fp32.step_mb and nf4.flops_per_step == fp32.flops_per_step
    assert nf4.weights_mb < fp32.weights_mb and nf4.dequant_mb > 0
    assert fp32.trainable == nf4.trainable and fp32.reply_bytes == 4 * fp32.trainable


def test_more_tokens_more_memory_and_flops():
    small = estimate(case_config("tiny-bert", "none", "lora", 4, 32, 2), 4, runtime=0.0)
    big = estimate(case_config("tiny-bert", "none", "lora", 8, 64, 2), 4, runtime=0.0)
    assert big.step_mb > 1.5 * small.step_mb and big.flops_per_step > 3 * small.flops_per_step
    assert small.steps == 2 and small.flops == 2 * small.flops_per_step


@pytest.mark.parametrize("model, method, seq", [("tiny-bert", "lora", 64), ("tiny-llama", "zo_seed", 160)])
def test_estimate_within_20_percent_of_a_real_train_call(model, method, seq):
    est = estimate(case_config(model, "none", method, 8, seq, 2), 4)
    got = run_child("benchmarks.estimate", [model, "none", method, "--batch", "8", "--seq", str(seq), "--steps", "2"],
                    f"{model}/{method}", {"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert est.peak_mb == pytest.approx(got["peak_mb"], rel=0.20), (est.as_dict(), got)
