"""The tiny teacher with the real LLaVA-1.5 vocabulary (`python -m teacher.weights.tiny --vocab llama`).

Same tiny random towers as teacher.weights.tiny, but every value that touches ids, text or pixels is
`llava-hf/llava-1.5-7b-hf`'s: the Llama-2 tokenizer (teacher.weights.llama_vocab: 32000 pieces, byte
fallback, "▁", BOS), `<image>` = 32000 and `<pad>` = 32001 in a 32064-row embedding, its chat
template, its CLIPImageProcessor settings, `vision_feature_layer` -2, strategy "default",
4096 positions. So class names are 4-7 real tokens and byte-fallback characters really split,
as they will with the real checkpoint.
"""

from __future__ import annotations

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from teacher.weights.llama_vocab import IMAGE_TOKEN_ID, PAD_TOKEN_ID, load_llama_tokenizer

IMAGE_SIZE, PATCH_SIZE = 336, 14
TEXT_VOCAB_SIZE = 32064  # llava-hf pads the embedding to a multiple of 64
MAX_POSITIONS = 4096
# llava-hf/llava-1.5-7b-hf's chat_template.json.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    return load_llama_tokenizer()  # built from npm on first use, then cached under data/models


def build_config(tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2, projection_dim=64,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=TEXT_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=PAD_TOKEN_ID,
    )  # fmt: skip
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID, vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        projector_hidden_act="gelu",
    )  # fmt: skip


def build_processor(tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    image_processor = CLIPImageProcessor(  # llava-hf's preprocessor_config.json
        do_resize=True, size={"shortest_edge": IMAGE_SIZE}, resample=3, do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )  # fmt: skip
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
