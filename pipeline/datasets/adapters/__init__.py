"""Dataset adapters (docs/design.md): each turns a raw dataset layout into `RawSample`s.

An adapter only reads annotations and lists files; checking and repairing image bytes is the
job of `pipeline.shards.checks`, so every adapter gets the same bad-input policy.
"""

from pipeline.datasets.adapters.base import AdapterResult, DatasetAdapter, RawSample
from pipeline.datasets.adapters.coco import CocoAdapter
from pipeline.datasets.adapters.imagefolder import ImageFolderAdapter
from pipeline.datasets.adapters.tinyimagenet import TinyImageNetAdapter
from pipeline.datasets.adapters.voc import VocAdapter

ADAPTERS: dict[str, type[DatasetAdapter]] = {
    "tinyimagenet": TinyImageNetAdapter,
    "imagefolder": ImageFolderAdapter,
    "coco": CocoAdapter,
    "voc": VocAdapter,
}

__all__ = [
    "ADAPTERS",
    "AdapterResult",
    "CocoAdapter",
    "DatasetAdapter",
    "ImageFolderAdapter",
    "RawSample",
    "TinyImageNetAdapter",
    "VocAdapter",
]
