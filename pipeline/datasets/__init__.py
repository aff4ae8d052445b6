"""Datasets (DESIGN 3.1): the registry (`data/registry.json`), one adapter per raw layout, and the
generated offline sample dataset."""
