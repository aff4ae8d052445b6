"""Map-content controls (issue 19, docs/science.md): the same I-ViT and budget with maps that carry no
information about their own image, so that "the maps teach" can be told from "any map helps".

- `shuffled`: each image gets another image's map and none keeps its own (a derangement of the
  valid maps among the images that have one): the maps' statistics stay, their content is wrong.
- `uniform`: each valid map becomes the uniform map (every patch alike).
Images without a valid map keep none; in `shuffled`, a batch with a single valid map has no
other map to give it, so that image loses its map (an invalid row, as a missing map).
"""

from __future__ import annotations

from typing import Literal

import torch

MapControl = Literal["teacher", "shuffled", "uniform"]


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of range(n) without fixed points (Sattolo's algorithm: a uniformly
    drawn single cycle), [n] long. n must be 0 or at least 2."""
    if n == 1:
        raise ValueError("a single map cannot be given to another image: derangement needs n >= 2")
    order = torch.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(torch.randint(i, (1,), generator=generator))  # j < i: i never stays in place
        order[[i, j]] = order[[j, i]]
    return order


def shuffled_maps(
    c_vlm: torch.Tensor, map_valid: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, g, g], [B]): the valid maps deranged among the valid images; invalid rows
    unchanged; a lone valid map is dropped (no other image to take it from)."""
    rows = map_valid.nonzero().flatten()  # [V]
    if len(rows) < 2:
        return torch.zeros_like(c_vlm), torch.zeros_like(map_valid)
    out = c_vlm.clone()
    out[rows] = c_vlm[rows[derangement(len(rows), generator)]]
    return out, map_valid


def uniform_maps(c_vlm: torch.Tensor, map_valid: torch.Tensor) -> torch.Tensor:
    """[B, g, g]: every valid map replaced by the uniform map; invalid rows unchanged."""
    out = c_vlm.clone()
    out[map_valid] = 1.0 / c_vlm[0].numel()
    return out


def apply_map_control(
    control: MapControl, c_vlm: torch.Tensor, map_valid: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps, validity) a run with `control` trains on ('teacher': the maps themselves)."""
    if control == "shuffled":
        return shuffled_maps(c_vlm, map_valid, generator)
    if control == "uniform":
        return uniform_maps(c_vlm, map_valid), map_valid
    return c_vlm, map_valid
