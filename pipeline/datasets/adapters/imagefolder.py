"""ImageFolder with domains (PACS, VLCS and other domain-generalization sets).

    <root>/<domain>/<class>/*.jpg

A split is one domain, or `all` for every domain; the class list is the union of class folder
names over all domains (sorted), so labels agree across domains and splits.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.datasets.adapters.base import (
    AdapterResult,
    DatasetAdapter,
    RawSample,
    make_key,
)
from pipeline.io import is_image_file

ALL_DOMAINS = "all"


class ImageFolderAdapter(DatasetAdapter):
    def _domains(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def splits(self) -> list[str]:
        return [ALL_DOMAINS, *(d.name for d in self._domains())]

    def load(self) -> AdapterResult:
        self.check_split()
        domains = self._domains()
        class_names = sorted({c.name for d in domains for c in d.iterdir() if c.is_dir()})
        if not class_names:
            raise FileNotFoundError(f"{self.root}: expected <domain>/<class>/<images> folders")
        label_of = {name: i for i, name in enumerate(class_names)}
        wanted = domains if self.split == ALL_DOMAINS else [self.root / self.split]
        result = AdapterResult([n.replace("_", " ") for n in class_names], class_names, [])
        for domain in wanted:
            for class_dir in sorted(c for c in domain.iterdir() if c.is_dir()):
                for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
                    if not is_image_file(path):
                        continue
                    relative = path.relative_to(self.root).with_suffix("")
                    result.samples.append(
                        RawSample(
                            key=make_key(*relative.parts),
                            path=path,
                            label=label_of[class_dir.name],
                            domain=domain.name,
                        )
                    )
        return result
