"""bench.gpu's arithmetic, its fidelity fields, and a real smoke run on the CPU (the GPU run is
`make bench-gpu`; `python -m bench.gpu --smoke` runs it on a CPU with the 7B cut to one layer,
the test with the tiny Llama-vocabulary teacher to stay short)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from bench import extract as bench_extract
from bench import gpu
from bench.llava7b import llava_15_7b_config, prefill_flops, quantize_nf4


def test_prefill_flops_count_every_linear_of_the_model():
    """Reference: 2 FLOPs per weight per token, read off the real module tree (meta device),
    plus the attention products counted by hand."""
    config = llava_15_7b_config(32000, 32001, layers=2)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    prompt = 640
    expected = 0.0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            tokens = (
                577 if "vision_tower" in name
                else 576 if "multi_modal_projector" in name
                else 1 if "lm_head" in name
                else prompt
            )  # fmt: skip
            expected += 2 * module.in_features * module.out_features * tokens
    expected += 2 * (2 * 2 * 577**2 * 1024)  # 2 vision layers: q k^T and p v, full
    expected += 2 * (2 * prompt**2 * 4096)  # 2 text layers: causal half of both products
    assert prefill_flops(config, prompt) == pytest.approx(expected, rel=1e-12)
    full = prefill_flops(llava_15_7b_config(32000, 32001, None), prompt)
    assert 8.5e12 < full < 9.5e12  # ~2 x 7B x 640 tokens, plus CLIP-L's ~0.35 TFLOP


def test_nf4_replaces_the_language_linears_only():
    config = llava_15_7b_config(32, 33, layers=1)
    config.text_config.vocab_size, config.text_config.hidden_size = 64, 64  # small, same tree
    config.text_config.intermediate_size, config.text_config.num_attention_heads = 128, 4
    config.text_config.num_key_value_heads = 4
    model = LlavaForConditionalGeneration(config)
    assert quantize_nf4(model, torch.float32) == 7  # q k v o, gate up down
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    assert kinds["model.language_model.layers.0.mlp.down_proj"] == "Linear4bit"
    assert kinds["lm_head"] == "Linear"
    assert kinds["model.multi_modal_projector.linear_1"] == "Linear"


def test_result_line_states_the_prefill_fraction_and_the_fidelity():
    result = {
        "timing": {"images": 16}, "images_per_s": {"fast": 4.0, "naive": 1.0}, "speedup": 4.0,
        "memory_ratio": 3.0, "same_answers": 13, "max_map_diff_agreeing": 2.5e-3,
        "float32": {"images": 4, "same_answers": 4, "max_map_diff": 3e-8}, "fidelity_ok": True,
    }  # fmt: skip
    line = gpu.result_line("fp16", result, flops=4e12, peak=100e12)
    # limit = 100e12 / 4e12 = 25 images/s; fast 4 images/s -> 0.16 of it
    assert "prefill_limit_images_per_s=25.00 prefill_fraction=0.1600" in line
    assert "same_answers=13/16 max_map_diff_agreeing=0.0025" in line
    assert line.endswith("fp32_same_answers=4/4 fp32_max_map_diff=3e-08 fidelity=ok")
    assert gpu.peak_dense_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu.peak_dense_flops("NVIDIA H100 PCIe") == 756e12


def test_fidelity_compares_answers_and_maps_by_hand():
    def record(answer: str, value: float) -> SimpleNamespace:
        maps = {k: np.full((2, 2), value, np.float32) for k in ("c_fore", "c_back", "c_vlm")}
        return SimpleNamespace(answer=answer, **maps)

    fast = [record("a", 0.5), record("b", 0.25), record("c", 0.0)]
    naive = [record("a", 0.5 + 1e-5), record("x", 0.75), record("c", 2e-4)]
    compared = bench_extract.compare(fast, naive)
    assert compared["images"] == 3 and compared["same_answers"] == 2
    assert compared["max_map_diff"] == pytest.approx(0.5)  # the disagreeing image
    assert compared["max_map_diff_agreeing"] == pytest.approx(2e-4, rel=1e-3)
    assert not bench_extract.fidelity_ok(compared)  # an answer differs
    agreeing = bench_extract.compare(fast[:1], naive[:1])
    assert bench_extract.fidelity_ok(agreeing)  # 1e-5 <= 1e-4
    assert not bench_extract.fidelity_ok({**agreeing, "max_map_diff": 2e-4})
    assert bench_extract.compare(fast[1:2], naive[1:2])["max_map_diff_agreeing"] is None
