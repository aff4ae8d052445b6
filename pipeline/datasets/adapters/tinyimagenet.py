"""TinyImageNet's own layout.

wnids.txt                       one wnid per line (the class order = labels)
words.txt                       wnid<TAB>comma-separated names
train/<wnid>/images/*.JPEG      with train/<wnid>/<wnid>_boxes.txt: file x0 y0 x1 y1
val/images/*.JPEG               with val/val_annotations.txt: file wnid x0 y0 x1 y1
<split>/images/*.JPEG           any other split laid out like val/ (e.g. sample-shift's test_shift)
"""

from __future__ import annotations

from pathlib import Path

from pipeline.datasets.adapters.base import AdapterResult, DatasetAdapter, RawSample, make_key
from pipeline.shards.records import Box, SkippedSample


def read_words(path: Path) -> dict[str, str]:
    """wnid -> first human name (words.txt lists synonyms separated by commas)."""
    names: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "\t" in line:
            wnid, words = line.split("\t", 1)
            names[wnid.strip()] = words.split(",")[0].strip()
    return names


def read_box_lines(path: Path, with_wnid: bool) -> dict[str, tuple[str | None, Box]]:
    """file name -> (wnid or None, box) from a TinyImageNet annotation file."""
    table: dict[str, tuple[str | None, Box]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        expected = 6 if with_wnid else 5
        if len(fields) != expected:
            raise ValueError(f"{path}:{number}: expected {expected} fields, got {len(fields)}")
        wnid = fields[1] if with_wnid else None
        x0, y0, x1, y1 = (float(v) for v in fields[-4:])
        table[fields[0]] = (wnid, (x0, y0, x1, y1))
    return table


class TinyImageNetAdapter(DatasetAdapter):
    def splits(self) -> list[str]:
        # Besides train and val, any folder laid out like val/ (e.g. a shifted test split).
        extra = sorted(
            d.name
            for d in self.root.glob("*")
            if d.name not in ("train", "val") and (d / "val_annotations.txt").is_file()
        )
        return ["train", "val", *extra]

    def load(self) -> AdapterResult:
        self.check_split()
        wnids_file, words_file = self.root / "wnids.txt", self.root / "words.txt"
        for required in (wnids_file, words_file):
            if not required.exists():
                raise FileNotFoundError(f"{required} is missing: not a TinyImageNet layout")
        wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
        words = read_words(words_file)
        classes = [words.get(w, w) for w in wnids]
        result = AdapterResult(classes, wnids, [], annotation_files=[wnids_file, words_file])
        if self.split == "train":
            self._load_train(wnids, result)
        else:
            self._load_val(wnids, result)
        return result

    def _load_train(self, wnids: list[str], result: AdapterResult) -> None:
        for label, wnid in enumerate(wnids):
            class_dir = self.root / "train" / wnid
            box_file = class_dir / f"{wnid}_boxes.txt"
            boxes: dict[str, tuple[str | None, Box]] = {}
            note = []
            if box_file.exists():
                boxes = read_box_lines(box_file, with_wnid=False)
                result.annotation_files.append(box_file)
            else:
                # Labels come from the folder, so the images stay; only the visual prompt is lost.
                note = [f"no box file {box_file.name}: kept without boxes"]
            for path in sorted((class_dir / "images").glob("*")):
                if not path.is_file():
                    continue
                box = boxes.get(path.name)
                result.samples.append(
                    RawSample(
                        key=make_key(path.stem),
                        path=path,
                        label=label,
                        boxes=[box[1]] if box else [],
                        notes=list(note),
                    )
                )

    def _load_val(self, wnids: list[str], result: AdapterResult) -> None:
        annotations = self.root / self.split / "val_annotations.txt"
        images = sorted(p for p in (self.root / self.split / "images").glob("*") if p.is_file())
        if not annotations.exists():
            # Without it there is no label: every image is skipped, and each one says why.
            result.skipped += [
                SkippedSample(source=str(p), reason=f"no label: {annotations} is missing")
                for p in images
            ]
            return
        result.annotation_files.append(annotations)
        table = read_box_lines(annotations, with_wnid=True)
        label_of = {w: i for i, w in enumerate(wnids)}
        for path in images:
            entry = table.get(path.name)
            if entry is None or entry[0] not in label_of:
                reason = (
                    "not in val_annotations.txt" if entry is None else f"unknown wnid {entry[0]}"
                )
                result.skipped.append(SkippedSample(source=str(path), reason=reason))
                continue
            wnid, box = entry
            result.samples.append(
                RawSample(key=make_key(path.stem), path=path, label=label_of[wnid], boxes=[box])
            )
