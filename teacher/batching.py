"""How many images one teacher batch holds (issue 20: batch size was most of the GPU's loss).

On a GPU the default ("auto") fills the memory left after loading: every image in a batch keeps
a KV cache of 2 x layers x key-value heads x head size values per token, for its prompt and its
answer budget, and an H200 measured the batch's peak beyond the weights at 1.19x that cache
(bench.gpu on an H200, docs/benchmarks.md), so PEAK_PER_CACHE leaves a margin. A CPU keeps 8: there the
matmuls are already large at batch 1 and bigger batches only pad more.
"""

from __future__ import annotations

import torch

CPU_BATCH_SIZE = 8
PEAK_PER_CACHE = 1.5  # the batch's peak memory over its KV cache (1.19 measured on an H200)
FREE_FRACTION = 0.9  # of the free memory, leaving room to the allocator's fragmentation
MAX_BATCH_SIZE = 256  # beyond this images/s barely moved on an H200 (27.6 at 128)


def kv_cache_bytes_per_token(text_config, dtype: torch.dtype) -> int:
    """Bytes of K and V one token keeps in every decoder layer."""
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    element = torch.finfo(dtype).bits // 8
    return 2 * text_config.num_hidden_layers * kv_heads * head_dim * element


def auto_batch_size(text_config, dtype: torch.dtype, tokens: int, free_bytes: int) -> int:
    """Images per batch whose KV caches (`tokens` per image) and activations fit the free
    memory, between 1 and MAX_BATCH_SIZE."""
    per_image = PEAK_PER_CACHE * kv_cache_bytes_per_token(text_config, dtype) * tokens
    return int(max(1, min(MAX_BATCH_SIZE, FREE_FRACTION * free_bytes // per_image)))


def free_memory(device: torch.device) -> int | None:
    """Bytes a batch can use on a CUDA device (None elsewhere): what the driver has free plus
    what PyTorch's caching allocator holds unused (the previous batch's blocks, which the
    driver counts as taken)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached)
