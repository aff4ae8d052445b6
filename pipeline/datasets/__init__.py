"""Datasets (docs/design.md): the registry (`data/registry.json`), an adapter per raw layout, the
generated offline sample dataset."""
