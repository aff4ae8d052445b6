"""A word's map: the mean of its tokens' attention rows, as a G x G grid (docs/maps.md).

The token at position p was produced by the query at p - 1, so a word spanning answer tokens
[s, e) uses rows s-1 .. e-2. teacher.maps.filters then turns the words' maps into C_fore, C_back and
C_VLM (Eq. 11/12).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from teacher.maps.spans import Span, tokens_of

RowFn = Callable[[int, int], torch.Tensor]  # (item in batch, padded query position) -> [I]


def word_positions(
    words: list[Span], token_spans: list[Span], answer_start: int
) -> list[list[int]]:
    """Padded positions of each word's answer tokens; words no token overlaps are dropped."""
    positions = [[answer_start + k for k in tokens_of(span, token_spans)] for span in words]
    return [p for p in positions if p]


def word_map(row: RowFn, item: int, positions: list[int], grid: int) -> np.ndarray:
    """Mean of the rows that produced the word's tokens (query p-1 for token p), [G, G]."""
    rows = torch.stack([row(item, p - 1) for p in positions])  # [rows, I]
    return rows.mean(0).reshape(grid, grid).cpu().numpy()
