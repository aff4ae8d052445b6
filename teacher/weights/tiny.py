"""A tiny, randomly initialised LLaVA-1.5 for offline runs and tests (`python -m teacher.weights.tiny`).

It keeps everything of LLaVA-1.5 that shapes a map: `LlavaForConditionalGeneration`, a CLIP
vision tower at 336 px with 14 px patches (576 image tokens after dropping CLS), the
penultimate-layer feature selection, a Llama language model (with grouped-query attention so the
fast path's GQA handling is exercised), a `LlavaProcessor` and a fast tokenizer with an
`<image>` special token. Only the sizes are tiny, so it loads through exactly the same code path
as the real checkpoint, quantized too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from teacher.prompting.prompts import PROMPTS
from teacher.weights import tiny_llama
from teacher.weights.aliases import default_tiny_dir

IMAGE_SIZE = 336  # LLaVA-1.5's CLIP ViT-L/14-336 input
PATCH_SIZE = 14  # -> 24 x 24 = 576 image tokens
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
SEED = 0

# Words the tokenizer learns as whole pieces: TinyImageNet-like class names, the sample dataset's
# shape names, and background words. Anything else still tokenizes (byte-level BPE), only into
# more pieces, which is what exercises multi-token words.
CLASS_WORDS = (
    "goldfish salamander bullfrog tailed frog alligator boa constrictor trilobite scorpion "
    "spider tarantula centipede goose koala jellyfish coral snail slug lobster crab stork "
    "penguin albatross dugong chihuahua terrier retriever labrador poodle tabby cat persian "
    "cougar lion bear ladybug fly bee grasshopper cockroach mantis dragonfly butterfly sulphur "
    "sea cucumber guinea pig hog ox bison bighorn gazelle camel orangutan chimpanzee baboon "
    "elephant panda abacus gown altar apron backpack bannister barbershop barn barrel "
    "basketball bathtub wagon beacon beaker bikini binoculars birdhouse bow tie brass "
    "broom bucket train butcher shop candle cannon cardigan cash machine cd player chain "
    "chest christmas stocking cliff dwelling computer keyboard confectionery convertible crane "
    "dam desk dining table drumstick dumbbell flagpole fountain freight car frying pan fur coat "
    "gasmask go-kart gondola hourglass ipod jinrikisha kimono lampshade lawn mower lifeboat "
    "limousine magnetic compass maypole military uniform miniskirt moving van nail neck brace "
    "obelisk oboe organ parking meter pay-phone picket fence pill bottle plunger pole police van "
    "poncho pop bottle potter's wheel projectile punching bag reel refrigerator remote control "
    "rocking chair rugby ball sandal school bus scoreboard sewing machine snorkel sock sombrero "
    "space heater spider web sports car steel arch bridge stopwatch sunglasses suspension bridge "
    "swimming trunks syringe teapot teddy torch tractor triumphal arch trolleybus turnstile "
    "umbrella vestment viaduct volleyball water jug water tower wok wooden spoon comic book "
    "plate guacamole ice cream lolly pretzel mashed potato cauliflower bell pepper mushroom "
    "orange lemon banana pomegranate meat loaf pizza potpie espresso alp cliff coral reef "
    "lakeside seashore acorn circle disc square block triangle wedge star pentagram ring hoop "
    "cross plus sign diamond rhombus hexagon honeycomb cell crescent moon bar stripe dog car "
    "person bicycle bird boat bottle bus chair cow horse sheep sofa"
)
BACKGROUND_WORDS = (
    "grass sky water sea sand road street wall floor table room indoor outdoor forest tree "
    "trees field snow rock rocks mountain city urban building buildings window shelf kitchen "
    "gradient noise stripes checkerboard pattern texture blue green red white black gray "
    "yellow dark light background foreground object image picture photo scene the a an and "
    "of in on with is are there yes no"
)


def training_corpus() -> list[str]:
    """Every text the tiny tokenizer should know well: templates, chat form, words."""
    texts = [str(p.question) + " " + str(p.forced_answer or "") for p in PROMPTS.values()]
    texts += ["USER: <image>\n ASSISTANT:", "{'foreground': '', 'background': ''}"]
    texts += [CLASS_WORDS, BACKGROUND_WORDS]
    # Repetition gives the BPE merges enough counts to learn whole words.
    return texts * 4


def build_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",  # batched generation needs left padding
    )


def build_config(tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,  # >= 2 because LLaVA reads the penultimate layer (-2)
        num_attention_heads=2,
        projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA on purpose (LLaVA-1.5-7B has none; Llama-3-based VLMs do)
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        projector_hidden_act="gelu",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy
    )


Vocab = Literal["bpe", "llama"]


def build_tiny_teacher(out_dir: str | Path | None = None, vocab: Vocab = "bpe") -> Path:
    """Write the tiny checkpoint, tokenizer and processor to `out_dir` (deterministic).

    vocab="bpe": a small byte-level BPE trained here; "llama": the real LLaVA-1.5 tokenizer and
    every llava-hf configuration value (teacher.weights.tiny_llama), with the same tiny towers.
    """
    out = Path(out_dir) if out_dir is not None else default_tiny_dir(vocab)
    out.mkdir(parents=True, exist_ok=True)
    kit = tiny_llama if vocab == "llama" else None
    tokenizer = kit.build_tokenizer() if kit else build_tokenizer()
    torch.manual_seed(SEED)
    config = kit.build_config(tokenizer) if kit else build_config(tokenizer)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    (kit.build_processor(tokenizer) if kit else build_processor(tokenizer)).save_pretrained(out)
    marker = {"built_by": "python -m teacher.weights.tiny", "seed": SEED, "random_weights": True}
    (out / "TINY_TEACHER.json").write_text(json.dumps({**marker, "vocab": vocab}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=None, help="output directory (default: data/models/tiny-llava[-llama])"
    )
    parser.add_argument(
        "--vocab", choices=["bpe", "llama"], default="bpe",
        help="bpe: small local tokenizer; llama: the real LLaVA-1.5 vocabulary (from npm, cached)",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"tiny teacher written to {build_tiny_teacher(args.out, args.vocab)}")


if __name__ == "__main__":
    main()
