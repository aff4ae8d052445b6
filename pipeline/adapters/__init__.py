"""Dataset adapters (DESIGN 3.1): each turns a raw dataset layout into `RawSample`s.

An adapter only reads annotations and lists files; checking and repairing image bytes is the
job of `pipeline.sample_check`, so every adapter gets the same bad-input policy.
"""

from pipeline.adapters.base import AdapterResult, DatasetAdapter, RawSample
from pipeline.adapters.coco import CocoAdapter
from pipeline.adapters.imagefolder import ImageFolderAdapter
from pipeline.adapters.tinyimagenet import TinyImageNetAdapter
from pipeline.adapters.voc import VocAdapter

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
