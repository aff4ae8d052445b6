"""The real LLaVA-1.5 (Llama-2) tokenizer, rebuilt offline from npm's `llama-tokenizer-js@1.2.2`.

`llava-hf/llava-1.5-7b-hf` tokenizes with Llama-2's SentencePiece-BPE vocabulary: 32000 pieces,
byte fallback (`<0x00>`..`<0xFF>`), a leading "▁" on the first word, BOS, and two added special
tokens, `<image>` = 32000 and `<pad>` = 32001. The npm package embeds exactly that vocabulary and
its 61,249 merges (its `data-conversion.py`: the vocabulary as "\\n"-joined UTF-8, base64; each
merge as two little-endian uint16 vocabulary ids, base64). From them we build, with the
`tokenizers` library, the pipeline transformers' `LlamaTokenizerFast` uses (`legacy=False`): a
BPE model with `byte_fallback` and `fuse_unk`, no normalizer, a Metaspace("▁",
prepend_scheme="first") pre-tokenizer, the Replace/ByteFallback/Fuse/Strip decoder and a
`<s> $A` template. Merges are applied by rank, so the result equals SentencePiece's score order
as HF's converter wrote it.

Built once (`ensure_llama_tokenizer()`, at `make tiny-teacher VOCAB=llama` or on first use) and
cached under `data/models/llama-tokenizer/` as an ordinary `save_pretrained` folder.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

from filelock import FileLock
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, LlamaTokenizerFast, PreTrainedTokenizerFast

from pipeline.paths import models_dir

NPM_PACKAGE = "llama-tokenizer-js@1.2.2"
# sha256 of the package's llama-tokenizer.js: the data we convert, whoever served the tarball.
JS_SHA256 = "34a7b9f7579d40486444590c37cba6564ef40c3dd98ecdfc2f7c886ae72c898d"
VOCAB_SIZE, NUM_MERGES = 32000, 61249
IMAGE_TOKEN, IMAGE_TOKEN_ID = "<image>", 32000
PAD_TOKEN, PAD_TOKEN_ID = "<pad>", 32001
CHECK_TEXT, CHECK_IDS = "Hello this is a test", [1, 15043, 445, 338, 263, 1243]
NPM_TIMEOUT_S = 120


class LlamaVocabularyError(RuntimeError):
    """The npm package could not be fetched, or its data is not the expected vocabulary."""


def default_tokenizer_dir() -> Path:
    return models_dir() / "llama-tokenizer"


def fetch_npm_js(workdir: Path) -> str:
    """`npm pack` the package into `workdir` and return its llama-tokenizer.js (checked)."""
    npm = shutil.which("npm")
    if npm is None:
        raise LlamaVocabularyError(
            f"building the Llama tokenizer needs npm (to fetch {NPM_PACKAGE}), and npm is not "
            "on PATH: install Node.js/npm (e.g. `apt-get install npm`), or copy a built "
            f"{default_tokenizer_dir()} from another machine"
        )
    try:
        done = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--pack-destination", str(workdir), "--silent"],
            capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise LlamaVocabularyError(
            f"`npm pack {NPM_PACKAGE}` did not finish in {NPM_TIMEOUT_S} s: is the npm registry "
            "reachable (proxy settings, `npm config get registry`)?"
        ) from err
    tarballs = sorted(workdir.glob("llama-tokenizer-js-*.tgz"))
    if done.returncode != 0 or not tarballs:
        raise LlamaVocabularyError(
            f"`npm pack {NPM_PACKAGE}` failed (exit {done.returncode}); is the npm registry "
            f"reachable? npm said:\n{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    with tarfile.open(tarballs[0]) as tar:
        member = tar.extractfile("package/llama-tokenizer.js")
        if member is None:
            raise LlamaVocabularyError(f"{tarballs[0].name} holds no package/llama-tokenizer.js")
        raw = member.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != JS_SHA256:
        raise LlamaVocabularyError(
            f"{NPM_PACKAGE}'s llama-tokenizer.js has sha256 {digest}, expected {JS_SHA256}"
        )
    return raw.decode("utf-8")


def _js_constant(js: str, name: str) -> bytes:
    match = re.search(rf'const {name} = "([A-Za-z0-9+/=]+)"', js)
    if match is None:
        raise LlamaVocabularyError(f"llama-tokenizer.js defines no base64 constant {name}")
    return base64.b64decode(match.group(1))


def vocabulary_and_merges(js: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(pieces by id, merges by rank) from llama-tokenizer.js, as data-conversion.py wrote them."""
    pieces = _js_constant(js, "llama_vocab_base64").decode("utf-8").split("\n")
    ids = _js_constant(js, "llama_merges_binary")
    pairs = struct.unpack(f"<{len(ids) // 2}H", ids)
    merges = [(pieces[a], pieces[b]) for a, b in zip(pairs[::2], pairs[1::2], strict=True)]
    if len(pieces) != VOCAB_SIZE or len(merges) != NUM_MERGES:
        raise LlamaVocabularyError(
            f"expected {VOCAB_SIZE} pieces and {NUM_MERGES} merges, got {len(pieces)} and "
            f"{len(merges)}"
        )
    return pieces, merges


def build_tokenizer(pieces: list[str], merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    """LlamaTokenizerFast's pipeline (legacy=False) over these pieces, plus LLaVA's added tokens."""
    vocab = {piece: i for i, piece in enumerate(pieces)}
    bpe = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    bpe.normalizer = None
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    bpe.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    special = [
        AddedToken(token, normalized=False, special=True)
        for token in ("<unk>", "<s>", "</s>", IMAGE_TOKEN, PAD_TOKEN)
    ]
    bpe.add_special_tokens(special)
    if bpe.token_to_id(IMAGE_TOKEN) != IMAGE_TOKEN_ID or bpe.token_to_id(PAD_TOKEN) != PAD_TOKEN_ID:
        raise LlamaVocabularyError("<image>/<pad> did not land on ids 32000/32001")
    # Saved as a LlamaTokenizer with legacy=False, like llava-hf's: transformers 5 rebuilds it
    # through LlamaTokenizer.__init__ (the same pipeline as above) exactly as it does the real one.
    return LlamaTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",  # as llava-hf's tokenizer_config.json
        clean_up_tokenization_spaces=False,
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        use_default_system_prompt=False,
    )


def check_tokenizer(tokenizer: PreTrainedTokenizerFast) -> None:
    got = tokenizer(CHECK_TEXT)["input_ids"]
    if got != CHECK_IDS:
        raise LlamaVocabularyError(f"{CHECK_TEXT!r} -> {got}, Llama-2 gives {CHECK_IDS}")


def ensure_llama_tokenizer(out_dir: str | Path | None = None) -> Path:
    """The cached tokenizer folder, built from npm first if absent (safe across processes)."""
    out = Path(out_dir) if out_dir is not None else default_tokenizer_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "tokenizer.json").exists():
            return out
        with tempfile.TemporaryDirectory(prefix="llama-vocab-", dir=out.parent) as tmp:
            tokenizer = build_tokenizer(*vocabulary_and_merges(fetch_npm_js(Path(tmp))))
            check_tokenizer(tokenizer)
            staged = Path(tmp) / "tokenizer"
            tokenizer.save_pretrained(staged)
            staged.rename(out)  # whole folder or nothing: a killed build leaves no half cache
    return out


def load_llama_tokenizer(out_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(ensure_llama_tokenizer(out_dir))


if __name__ == "__main__":
    print(f"Llama tokenizer at {ensure_llama_tokenizer()}")
