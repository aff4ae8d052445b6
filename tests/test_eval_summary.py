"""The eval flow's summary artifact for classification and dense results."""

from __future__ import annotations


def test_eval_summary_of_a_dense_run_has_its_coco_numbers_and_no_human_section():
    # `make eval` on a dense run crashed here: dense results have no human_alignment
    from flows.evaluate import EvalParams, summary_markdown

    params = EvalParams(run="demo-detect", dataset="sample-coco")
    text = summary_markdown(params, {"bbox_mAP": 0.0831, "bbox_AP50": 0.3003, "samples": 100})
    assert "- bbox_mAP: 0.0831" in text and "- bbox_AP50: 0.3003" in text
    assert "Cosine" not in text
    human = {"reference": "box mask", "figure": "f.png",
             "cosine": {"C_AGT": {"mean": 0.5, "std": 0.1, "n": 3}, "C_VLM": None}}  # fmt: skip
    text = summary_markdown(params, {"top1": 0.5, "human_alignment": human})
    assert "| C_AGT | 0.500 +- 0.100 | 3 |" in text and "| C_VLM | n/a | 0 |" in text
