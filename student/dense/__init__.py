"""Dense students (docs/dense.md): the I-ViT as the backbone of transformers' Conditional DETR for
detection (`task="detect"`) and instance segmentation (`task="segment"`), with the CLS-row
alignment to the dense C_VLM (paper Sec. 5.3)."""
