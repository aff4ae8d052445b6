"""The fast path: SDPA for every layer's output, plus only the attention rows we need.

`rows_attention_forward` is registered with transformers' AttentionInterface and used by the
language model only (the vision tower keeps SDPA). While a RowCapture is active it computes,
for the selected decoder layers, softmax(q k^T * scaling + mask) for a handful of query rows
(the forced answer's rows at prefill, the single query of every decode step), keeps the
image-token columns and accumulates their head mean. Full attention is never materialized:
the extra work is O(rows x keys) per head instead of O(keys^2).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ROWS_ATTENTION = "lfi_rows"


class RowCapture:
    """Head/layer-mean attention rows over the image columns, for a batch of sequences.

    Positions are indices into the (left-padded) batch sequence. `prefill_rows[b]` lists the
    query positions kept from the prompt's forward; every decode step keeps its single query,
    whose position is `prompt_length + step`.
    """

    def __init__(
        self,
        prefill_rows: torch.Tensor,  # [B, R] long, padded positions (repeat the last to fill)
        image_start: torch.Tensor,  # [B] long, position of each sequence's first image token
        num_image_tokens: int,
        prompt_length: int,  # padded prompt length P
        layers: list[int],
        heads: list[int] | None,
        device: torch.device | str | None = None,
    ) -> None:
        self.prefill_rows = prefill_rows.cpu()  # for `row`, read on the host after generation
        self.num_image_tokens = num_image_tokens
        self.prompt_length = prompt_length
        self.layers = set(layers)
        self.first_layer = min(layers)
        self.heads = heads
        # Index tensors live on the model's device from the start: a host->device copy inside
        # `record` would wait for the GPU once per layer and decode step.
        target = prefill_rows.device if device is None else torch.device(device)
        self._rows = prefill_rows.to(target)  # [B, R]
        columns = image_start[:, None] + torch.arange(num_image_tokens)  # [B, I]
        self._columns = columns.to(target)
        self._heads = None if heads is None else torch.tensor(heads, device=target)
        self.prefill: torch.Tensor | None = None  # [B, R, I], summed over layers
        self.decode: list[torch.Tensor] = []  # per step: [B, I], summed over layers

    def to_host(self) -> None:
        """Bring the captured rows to the CPU in one copy each, after generation: `row` is
        then called per word without touching the device."""
        if self.prefill is not None:
            self.prefill = self.prefill.cpu()
        if self.decode:
            self.decode = list(torch.stack(self.decode).cpu().unbind(0))

    def record(
        self,
        layer_idx: int,
        query: torch.Tensor,  # [B, H, q, D]
        key: torch.Tensor,  # [B, Hkv, K, D] (whole cache)
        attention_mask: torch.Tensor | None,  # [B or 1, 1, q, K] bool/additive, or None = causal
        scaling: float,
    ) -> None:
        if layer_idx not in self.layers:
            return
        batch, heads, q_len, dim = query.shape
        kv_heads, k_len = key.shape[1], key.shape[2]
        q, mask = self._rows_of(query, attention_mask, k_len)  # [B, H, R, D], [B, R, K] or None
        n_rows = q.shape[2]
        # GQA without repeat_kv: query heads h = g * n_rep + r share key head g.
        n_rep = heads // kv_heads
        q = q.reshape(batch, kv_heads, n_rep * n_rows, dim)  # [B, Hkv, n_rep*R, D]
        # q k^T in float32 for these few rows (cheap): in fp16/bf16 a Llama-2 logit can overflow
        # or lose the digits the softmax needs, and a NaN row would be lost to the cache.
        scores = (q.float() @ key.float().transpose(-1, -2)) * scaling  # [B, Hkv, n_rep*R, K]
        scores = scores.view(batch, heads, n_rows, k_len)  # [B, H, R, K]
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask[:, None], float("-inf"))
        elif mask is not None:
            scores = scores + mask[:, None].float()
        probs = scores.softmax(dim=-1)  # [B, H, R, K]
        if self._heads is not None:
            probs = probs.index_select(1, self._heads.to(query.device))
        columns = self._columns.to(query.device)  # [B, I]
        head_mean = probs.mean(dim=1)  # [B, R, K]
        image_rows = head_mean.gather(2, columns[:, None, :].expand(batch, n_rows, -1))  # [B,R,I]
        if q_len > 1:
            self.prefill = image_rows if self.prefill is None else self.prefill + image_rows
        elif layer_idx == self.first_layer:
            self.decode.append(image_rows[:, 0])  # a new decode step begins
        else:
            self.decode[-1] = self.decode[-1] + image_rows[:, 0]

    def _rows_of(
        self, query: torch.Tensor, attention_mask: torch.Tensor | None, k_len: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The kept query rows [B, H, R, D] and their mask [B, R, K] (bool or additive; None:
        every key allowed)."""
        batch, heads, q_len, dim = query.shape
        if q_len == 1:  # a decode step: its one query, at the last position, sees every key
            mask = None if attention_mask is None else attention_mask[:, 0].expand(batch, 1, k_len)
            return query, mask
        rows = self._rows.to(query.device)  # [B, R] absolute positions (no copy: same device)
        local = rows - (k_len - q_len)  # [B, R] index into this forward's queries
        n_rows = rows.shape[1]
        q = query.gather(2, local[:, None, :, None].expand(batch, heads, n_rows, dim))
        if attention_mask is None:
            # SDPA's is_causal path: a query sees every key at or before its own position.
            keys = torch.arange(k_len, device=query.device)
            return q, keys[None, None, :] <= rows[:, :, None]  # [B, R, K]
        mask = attention_mask[:, 0].expand(batch, q_len, k_len)  # [B, q, K]
        return q, mask.gather(1, local[:, :, None].expand(batch, n_rows, k_len))  # [B, R, K]

    def row(self, item: int, position: int) -> torch.Tensor:
        """Layer-mean image attention [I] of the query at padded `position` of sequence `item`."""
        if position >= self.prompt_length:
            step = position - self.prompt_length
            return self.decode[step][item] / len(self.layers)
        if self.prefill is None:
            raise RuntimeError("no prefill forward was captured")
        rows = self.prefill_rows[item].tolist()  # on the host (kept there)
        if position not in rows:
            raise KeyError(f"prefill row {position} of item {item} was not requested")
        return self.prefill[item, rows.index(position)] / len(self.layers)


_ACTIVE: ContextVar[RowCapture | None] = ContextVar("lfi_row_capture", default=None)


def rows_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    capture = _ACTIVE.get()
    if capture is not None:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        capture.record(module.layer_idx, query, key, attention_mask, scale)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask,
        dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs,
    )  # fmt: skip


_SDPA_MASK_SIGNATURE = inspect.signature(sdpa_mask)


def rows_attention_mask(*args, **kwargs):
    """SDPA's mask, except that a decode step (one query) always gets its mask built: SDPA's
    own check whether the mask may be skipped (`padding_mask.all()`) reads the GPU back once
    per step. The prompt's forward keeps the check, and with it the causal kernel. (Older
    transformers pass `cache_position` where newer ones pass `q_length`: both are read.)"""
    bound = _SDPA_MASK_SIGNATURE.bind(*args, **kwargs).arguments
    if "q_length" in bound:
        queries = int(bound["q_length"])
    else:
        queries = int(bound["cache_position"].shape[0])  # a shape: no read of the GPU
    if queries == 1 and "allow_is_causal_skip" in _SDPA_MASK_SIGNATURE.parameters:
        kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register_rows_attention() -> None:
    """Make ROWS_ATTENTION a valid attn_implementation (idempotent); masks as for SDPA, built
    without a host read at decode steps."""
    AttentionInterface.register(ROWS_ATTENTION, rows_attention_forward)
    AttentionMaskInterface.register(ROWS_ATTENTION, rows_attention_mask)


@contextmanager
def capturing(capture: RowCapture) -> Iterator[RowCapture]:
    token = _ACTIVE.set(capture)
    try:
        yield capture
    finally:
        _ACTIVE.reset(token)
