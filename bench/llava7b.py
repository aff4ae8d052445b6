"""LLaVA-1.5-7B's architecture with random weights, for benchmarks (bench.extract, bench.gpu).

The ids are the real ones (<image> 32000, <pad> 32001 in a 32064-row embedding, from the tiny
llama teacher's processor), NF4 is bitsandbytes' own Linear4bit with the skip list the teacher
loader uses, and `prefill_flops` counts the matmul FLOPs of one image's prompt forward, the
yardstick of bench.gpu's prefill limit.
"""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

FULL_TEXT_LAYERS, FULL_VISION_LAYERS = 32, 24  # LLaVA-1.5-7B: Vicuna-7B + CLIP ViT-L/14-336
SKIP_QUANT = ("vision_tower", "multi_modal_projector", "lm_head")  # as teacher.weights.loading


def llava_15_7b_config(image_token_id: int, pad_token_id: int, layers: int | None) -> LlavaConfig:
    """llava-hf/llava-1.5-7b-hf's architecture; `layers` cuts both towers' depth."""
    vision_layers = FULL_VISION_LAYERS if layers is None else max(2, min(layers, 24))
    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers,
        num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=32064, hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=layers or FULL_TEXT_LAYERS, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
        pad_token_id=pad_token_id,
    )  # fmt: skip
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=576, projector_hidden_act="gelu",
    )  # fmt: skip


def quantize_nf4(model: torch.nn.Module, compute_dtype: torch.dtype) -> int:
    """Replace the language model's nn.Linear layers by NF4 Linear4bit, in place, on the
    weights' own device; returns how many were replaced."""
    import bitsandbytes as bnb

    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is not torch.nn.Linear or any(s in full for s in SKIP_QUANT):
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=compute_dtype, quant_type="nf4", device="meta",
            )  # fmt: skip
            weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, quant_type="nf4", module=layer
            )
            layer.weight = weight.to(child.weight.device)  # quantizes (bitsandbytes' own path)
            layer.bias = child.bias
            setattr(parent, name, layer)
            replaced += 1
    return replaced


def prefill_flops(config: LlavaConfig, prompt_tokens: float) -> float:
    """Matmul FLOPs (2 per multiply-add) of one image's prompt forward: every vision layer over
    its 577 tokens, the projector over the 576 image tokens, every decoder layer over the
    prompt (causal attention: half the score matrix), and the LM head for the last token."""
    v, t = config.vision_config, config.text_config
    tokens_v = (v.image_size // v.patch_size) ** 2 + 1
    vision_layer = 2 * tokens_v * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
    vision_layer += 2 * 2 * tokens_v**2 * v.hidden_size
    image_tokens = config.image_seq_length
    projector = 2 * image_tokens * (v.hidden_size * t.hidden_size + t.hidden_size**2)
    head_dim = t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    per_token = 2 * (2 * t.hidden_size**2 + 2 * t.hidden_size * kv)  # q, o; k, v
    per_token += 2 * 3 * t.hidden_size * t.intermediate_size  # gate, up, down
    text_layer = prompt_tokens * per_token + 2 * 2 * prompt_tokens**2 * t.hidden_size / 2
    lm_head = 2 * t.hidden_size * t.vocab_size
    return (
        v.num_hidden_layers * vision_layer + projector + t.num_hidden_layers * text_layer + lm_head
    )
