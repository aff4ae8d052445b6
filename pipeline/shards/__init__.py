"""WebDataset shards (docs/design.md): sample records and the index, checks of raw images and boxes,
the writer, the reader, and `ensure_shards` (build a split's shards unless they are current)."""
