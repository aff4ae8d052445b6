"""bench.gpu's arithmetic and its mode loop, without a GPU (the real run is `make bench-gpu`;
`python -m bench.gpu --smoke` runs the whole thing on a CPU with the 7B cut to one layer)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

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


def test_one_result_line_per_mode_with_the_prefill_fraction(monkeypatch, capsys):
    seen = []

    def fake_measure(args):
        seen.append((args.quant, args.arch, args.device, args.images))
        timing = {
            "device": "cpu", "text_layers": 1, "vision_layers": 2,
            "seconds": {"fast": 0.5, "naive": 2.0}, "prompt_tokens": 600.0, "prefill_flops": 4e12,
        }  # fmt: skip
        memory = {"fast": {"peak_bytes": 2**20}, "naive": {"peak_bytes": 3 * 2**20}}
        return {
            "timing": timing, "memory": memory, "images_per_s": {"fast": 4.0, "naive": 1.0},
            "speedup": 4.0, "memory_ratio": 3.0, "max_abs_diff": 0.0, "same_answers": 2,
        }  # fmt: skip

    monkeypatch.setattr(gpu.bench_extract, "measure", fake_measure)
    gpu.main(["--smoke", "--peak-tflops", "100"])
    assert seen == [("none", "llava-1.5-7b", "cpu", 2), ("4bit", "llava-1.5-7b", "cpu", 2)]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT")]
    assert [line.split()[1] for line in lines] == ["mode=fp16", "mode=nf4"]
    # limit = 100e12 / 4e12 = 25 images/s; fast 4 images/s -> 0.16 of it
    assert "prefill_limit_images_per_s=25.00 prefill_fraction=0.1600" in lines[0]
    assert "speedup=4.00 memory_ratio=3.00" in lines[1]
    assert gpu.peak_dense_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu.peak_dense_flops("NVIDIA H100 PCIe") == 756e12
