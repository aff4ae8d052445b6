"""The student's input pipeline: WebDataset shards joined with cached C_VLM maps (docs/design.md).

Per worker, the stages are:

    tar reader (shards split by node, then by worker) -> FRACTION subset by key
    -> join with the shard's committed maps (read once per shard) -> sample shuffle buffer
    -> decode + one geometric view of the image -> batches, whose maps follow their images'
       views in one batched computation

The join sits before the shuffle buffer on purpose: the tar reader delivers a shard's samples
contiguously, so each shard's rows are read from the cache once, as one chunk per array; after
the buffer, shards interleave. Decoding sits after the buffer so it holds compressed bytes.

Batches are dicts: image float[B, 3, S, S] (normalized), label long[B], c_vlm float[B, g, g]
(g = S / patch; sums to 1 where map_valid, zeros elsewhere), map_valid bool[B], key list[str],
domain list[str | None].
"""

from __future__ import annotations

import io
import logging
import random
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from pydantic import Field, model_validator

from pipeline.cache import CacheEntry, ShardNotCommittedError, open_entry
from pipeline.cache.integrity import DamagedCacheError, check_shard, damage_message
from pipeline.shards.reader import image_member
from pipeline.shards.records import SampleRecord, read_index
from student.config import LoaderOptions
from student.map_controls import MapControl, apply_map_control
from student.maps import (
    PairedTransform,
    Rect,
    check_view_geometry,
    rects_array,
    teacher_view_rect,
    transform_maps,
)
from student.sampling import (
    FractionFilter,
    derive_seed,
    distributed_position,
    epoch_length,
    fraction_threshold,
    resolve_split_dir,
)

log = logging.getLogger(__name__)

Batch = dict[str, Any]


class LoaderConfig(LoaderOptions):
    """Everything that decides which samples a loader yields and how they look: the user's
    `LoaderOptions` plus what the run resolves for one split."""

    shard_dir: Path = Field(
        description="data/shards/<dataset> (the split is a subfolder) or the split folder itself"
    )
    split: str
    cache_entry: str | None = Field(
        default=None, description="<cache root>/<cache_key> path or URL; None: no maps"
    )
    storage_options: dict[str, Any] | None = Field(
        default=None, description="fsspec options for a cache entry on an object store"
    )
    img_size: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    train: bool = Field(description="training order and views; False: every sample, in order")
    seed: int = 0
    mean: tuple[float, float, float] = Field(description="the backbone's pretrained_cfg mean")
    std: tuple[float, float, float] = Field(description="the backbone's pretrained_cfg std")

    @model_validator(mode="after")
    def _grid_fits(self) -> LoaderConfig:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"LoaderConfig: img_size {self.img_size} is not a multiple of patch_size "
                f"{self.patch_size}"
            )
        return self

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


# ---- the map join --------------------------------------------------------------------------


class ShardMapJoin:
    """Pipeline stage: attach each sample's cached C_VLM row, reading each shard's rows once.

    Samples of shards without a commit record get no map (map_valid False) rather than
    stopping training: a cache still being extracted is usable. The loader warns once, when
    built, how many shards are pending; a shard committed later is joined from the next pass.

    Each shard's rows are checked as they are read (pipeline.cache.integrity: chunk checksum,
    missing chunk, non-finite or unnormalized valid maps): damage raises DamagedCacheError, one
    line naming the entry, shard, rows and repair, or with `skip_bad_rows` those rows get no map.
    """

    def __init__(
        self,
        entry_path: str,
        storage_options: dict[str, Any] | None,
        entry: CacheEntry | None = None,
        skip_bad_rows: bool = False,
    ) -> None:
        self.entry_path = entry_path
        self.storage_options = storage_options
        self.skip_bad_rows = skip_bad_rows
        # Reused as is in the main process (num_workers=0); workers reopen it once each.
        self._entry = entry

    def __getstate__(self) -> dict[str, Any]:
        # zarr and fsspec handles stay in the process that opened them
        return {**self.__dict__, "_entry": None}

    def entry(self) -> CacheEntry:
        if self._entry is None:
            self._entry = open_entry(self.entry_path, self.storage_options)
        return self._entry

    def read_rows(self, shard_name: str) -> dict[str, tuple[np.ndarray, bool]] | None:
        """key -> (c_vlm [G, G] float16, valid) for a committed shard, None for a pending one."""
        try:
            # Only what the student needs (key, c_vlm, valid): the rest stays on disk.
            rows, damage = check_shard(self.entry(), shard_name)
        except ShardNotCommittedError:
            # The main process warned once, at build time, with the count; a shard committed
            # since then is picked up here, so check at every pass.
            log.debug("%s: shard %s has no committed maps; its samples get map_valid=False",
                      self.entry_path, shard_name)  # fmt: skip
            return None
        if damage is not None:
            if not self.skip_bad_rows:
                raise DamagedCacheError(damage_message(self.entry(), [damage]))
            # The run's main process already reported the count (flows/train.py).
            log.debug("%s: skipping %d bad rows of %s", self.entry_path,
                      len(damage.bad_rows), shard_name)  # fmt: skip
            if rows is None:
                return None
            bad = list(damage.bad_rows)
            rows["valid"], rows["c_vlm"] = rows["valid"].copy(), rows["c_vlm"].copy()
            rows["valid"][bad], rows["c_vlm"][bad] = False, 0  # no NaN may reach the batch
        assert rows is not None
        keys, c_vlm, valid = rows["key"], rows["c_vlm"], rows["valid"]  # [n], [n, G, G], [n]
        return {str(k): (c_vlm[i], bool(valid[i])) for i, k in enumerate(keys)}

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        current_url, rows = None, None
        for sample in samples:
            url = sample["__url__"]
            if url != current_url:
                current_url, rows = url, self.read_rows(Path(url).name)
            if rows is None:
                sample["teacher_map"] = None
            else:
                key = sample["__key__"]
                if key not in rows and not self.skip_bad_rows:
                    raise KeyError(
                        f"{self.entry_path}: committed maps of {Path(url).name} have no row for "
                        f"sample {key!r}; the entry does not belong to these shards"
                    )
                sample["teacher_map"] = rows.get(key)  # None: a skipped row, no map
            yield sample


# ---- decode, augment, collate -----------------------------------------------------------


class DecodeAndView:
    """Pipeline stage: raw sample -> image tensor of one view, plus that view for its map."""

    def __init__(
        self, transform: PairedTransform, geometry: dict[str, Any] | None, view_seed: int = 0
    ) -> None:
        self.transform = transform
        self.geometry = geometry
        self.view_seed = view_seed  # with the sample's key, it fixes the sample's crop and flip
        self._views: dict[tuple[int, int], Rect] = {}  # datasets repeat a few image sizes

    def view_rect(self, width: int, height: int) -> Rect:
        assert self.geometry is not None
        rect = self._views.get((width, height))
        if rect is None:
            rect = self._views[width, height] = teacher_view_rect(self.geometry, width, height)
        return rect

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        key, url = sample["__key__"], sample.get("__url__", "?")
        try:
            record = SampleRecord.model_validate_json(sample["json"])
        except (KeyError, ValueError) as err:
            raise ValueError(f"{url}: sample {key!r} has no valid json record ({err})") from err
        _, data = image_member(sample)
        image = Image.open(io.BytesIO(data)).convert("RGB")
        if image.size != (record.width, record.height):
            raise ValueError(
                f"{url}: sample {key!r} decodes to {image.size} but its record says "
                f"{(record.width, record.height)}; maps would land on the wrong pixels"
            )
        # torchvision draws views from torch's global RNG: fork it, seeded by (pass, key), so a
        # sample's view is the same with any number of workers, on resume and in any process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.view_seed, key))
            tensor, crop, flip = self.transform.view_image(image)
        teacher_map = sample.get("teacher_map")
        has_map = teacher_map is not None and self.geometry is not None
        return {
            "image": tensor,  # [3, S, S]
            "label": record.label,
            "key": key,
            "domain": record.domain,
            # what the batch's map transform needs (see Collate)
            "teacher_map": teacher_map[0] if has_map else None,  # [G, G] float16
            "teacher_valid": teacher_map[1] if has_map else False,
            # without a map any non-empty rectangle will do: the row stays zeros and invalid
            "view_rect": self.view_rect(record.width, record.height) if has_map else crop,
            "crop": crop,
            "flip": flip,
        }


class Collate:
    """Stack samples into a batch and move all its maps with their views in one computation."""

    def __init__(self, grid: int, map_control: MapControl = "teacher") -> None:
        self.grid = grid
        self.map_control = map_control

    def maps(self, samples: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        present = [s["teacher_map"] for s in samples if s["teacher_map"] is not None]
        if not present:
            size = len(samples)
            return np.zeros((size, self.grid, self.grid), np.float32), np.zeros(size, bool)
        blank = np.zeros_like(present[0])  # rows of pending shards: invalid, never read
        return transform_maps(
            np.stack([blank if s["teacher_map"] is None else s["teacher_map"] for s in samples]),
            np.array([s["teacher_valid"] for s in samples], bool),  # [B]
            rects_array([s["view_rect"] for s in samples]),  # [B, 4]
            rects_array([s["crop"] for s in samples]),  # [B, 4]
            np.array([s["flip"] for s in samples], bool),  # [B]
            self.grid,
        )  # [B, g, g], [B]

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        c_vlm, map_valid = self.maps(samples)
        keys = [s["key"] for s in samples]
        # The same batch gets the same control maps in every process (seeded by its keys).
        generator = torch.Generator().manual_seed(zlib.crc32("\n".join(keys).encode()))
        maps, valid = apply_map_control(
            self.map_control, torch.from_numpy(c_vlm), torch.from_numpy(map_valid), generator
        )  # [B, g, g], [B]
        return {
            "image": torch.stack([s["image"] for s in samples]),  # [B, 3, S, S]
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),  # [B]
            "c_vlm": maps,  # [B, g, g]
            "map_valid": valid,  # [B]
            "key": keys,
            "domain": [s["domain"] for s in samples],
        }


# ---- the loader ---------------------------------------------------------------------------


class ShardMapLoader:
    """An epoch-aware iterable of batches for one rank (call `set_epoch` like a DistributedSampler).

    Training reshuffles the shard order (the same on every rank, so the node split stays a
    partition) and the sample buffer each epoch, and yields exactly `len(self)` full batches on
    every rank, repeating this rank's shards if they run short, so DDP ranks step together.
    Evaluation is deterministic: shard order, center view, every selected sample once.

    A sample's crop and flip are a function of (seed, epoch, repeat, its key) alone: the same
    with any number of workers, ranks or resumes, and independent of the caller's RNG.
    """

    def __init__(self, config: LoaderConfig) -> None:
        self.config = config
        self.split_dir = resolve_split_dir(config.shard_dir, config.split)
        self.index = read_index(self.split_dir)
        self.entry = self._open_cache()
        self.rank, self.world_size = distributed_position()
        shards = len(self.index.shards)
        if shards < self.world_size:
            # Shards are the unit of distribution. Training needs every rank fed (DDP steps
            # together); evaluation can leave ranks idle, its counts are summed over ranks.
            if config.train:
                raise ValueError(
                    f"{self.split_dir}: {shards} shard(s) cannot feed {self.world_size} training "
                    "ranks; write smaller shards (SHARD_SIZE) so each rank gets at least one"
                )
            log.warning("%s: %d shard(s) for %d ranks; rank %d evaluates %s",
                        self.split_dir, shards, self.world_size, self.rank,
                        "nothing" if self.rank >= shards else "one shard")  # fmt: skip
        self.epoch = 0
        self.fraction_threshold = fraction_threshold(self.index, config.fraction, config.seed)
        self._length = epoch_length(
            self.index, config.batch_size, config.train, self.fraction_threshold, config.seed,
            config.num_workers, self.rank, self.world_size,
        )  # fmt: skip
        if self._length == 0 and (config.train or self.world_size == 1):
            raise ValueError(
                f"{self.split_dir}: fraction {config.fraction} of {self.index.num_samples} samples "
                f"gives no batch of {config.batch_size} on each of {self.world_size} ranks"
            )

    def _open_cache(self) -> CacheEntry | None:
        if self.config.cache_entry is None:
            return None
        entry = open_entry(self.config.cache_entry, self.config.storage_options)
        entry.check_matches(self.index)  # CacheMismatchError naming both fingerprints
        check_view_geometry(entry.manifest.get("geometry"), f"{entry.path}/manifest.json")
        pending = entry.pending_shards()
        if pending:
            log.warning(
                "%s: %d of %d shards have no committed maps yet (first: %s); their samples get "
                "map_valid=False until an extraction run commits them",
                entry.path, len(pending), len(entry.shard_names), pending[0],
            )  # fmt: skip
        return entry

    @property
    def grid(self) -> int:
        return self.config.grid

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def shard_urls(self, epoch: int) -> list[str]:
        """This epoch's shard order; a rank that runs short repeats its own shards in it."""
        urls = [str(self.split_dir / shard.name) for shard in self.index.shards]
        if self.config.train:
            random.Random(derive_seed("shards", self.config.seed, epoch)).shuffle(urls)
        return urls

    def dataset(self, epoch: int, repeat: int = 0) -> wds.WebDataset:
        """The per-worker pipeline of one pass (a fresh object: its seeds depend on the epoch)."""
        cfg = self.config
        pipeline = wds.WebDataset(
            self.shard_urls(epoch),
            shardshuffle=False,  # shuffled above, identically on every rank
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            empty_check=False,  # a worker may own no shard when workers outnumber shards
        )
        if self.fraction_threshold is not None:
            pipeline = pipeline.select(FractionFilter(self.fraction_threshold, cfg.seed))
        geometry = None
        if self.entry is not None:
            pipeline = pipeline.compose(
                ShardMapJoin(self.entry.path, cfg.storage_options, self.entry, cfg.skip_bad_rows)
            )
            geometry = self.entry.manifest["geometry"]
        if cfg.train and cfg.shuffle_buffer > 0:
            pipeline = pipeline.shuffle(
                cfg.shuffle_buffer, seed=derive_seed("samples", cfg.seed, epoch, repeat)
            )
        view_seed = derive_seed("views", cfg.seed, epoch, repeat)
        pipeline = pipeline.map(self.decode_stage(geometry, view_seed))
        return pipeline.batched(
            cfg.batch_size, collation_fn=self.collate_stage(), partial=not cfg.train
        )

    def decode_stage(self, geometry: dict[str, Any] | None, view_seed: int) -> DecodeAndView:
        """Decode + view of one sample (dense students override it to carry their targets)."""
        cfg = self.config
        transform = PairedTransform(
            cfg.img_size, cfg.patch_size, cfg.mean, cfg.std, cfg.train,
            scale=cfg.crop_scale, ratio=cfg.crop_ratio, hflip_p=cfg.hflip_p,
            eval_crop_fraction=cfg.eval_crop_fraction,
        )  # fmt: skip
        return DecodeAndView(transform, geometry, view_seed)

    def collate_stage(self) -> Collate:
        return Collate(self.config.grid, self.config.map_control)

    def _batches(self, epoch: int, repeat: int = 0) -> Iterator[Batch]:
        cfg = self.config
        generator = torch.Generator().manual_seed(derive_seed("views", cfg.seed, epoch, repeat))
        loader = wds.WebLoader(
            self.dataset(epoch, repeat),
            batch_size=None,  # batched inside the workers
            num_workers=cfg.num_workers,
            generator=generator,  # seeds the workers' own RNG (views do not use it)
            persistent_workers=False,
        )
        yield from loader

    def __iter__(self) -> Iterator[Batch]:
        if not self.config.train:
            yield from self._batches(self.epoch)
            return
        produced, repeat = 0, 0
        while produced < self._length:
            before = produced
            for batch in self._batches(self.epoch, repeat):
                yield batch
                produced += 1
                if produced == self._length:
                    return
            if produced == before:
                raise RuntimeError(
                    f"{self.split_dir}: rank {self.rank} got no full batch from its shards"
                )
            repeat += 1


def build_loader(config: LoaderConfig) -> ShardMapLoader:
    """The classifier's loader for one split."""
    return ShardMapLoader(config)
