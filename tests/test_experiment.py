"""The experiment runner: grid expansion, seed aggregation against hand-made metrics files, the
report files, and resume (finished members are not rerun) through a real Prefect server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments.aggregate import DONE, aggregate, member_dir
from experiments.report import results_markdown, write_report
from experiments.spec import ExperimentSpec, load_spec, members
from experiments.stats import bootstrap_se

SPEC = {
    "name": "handmade",
    "title": "hand-made",
    "dataset": "sample",
    "base": {"epochs": 3},
    "baseline": "ViT",
    "variants": {
        "ViT": {"interaction_queries": False, "alignment": False},
        "I-ViT": {},
    },
    "teachers": {"box": {"cache_entry": "/nowhere/entry"}},
    "seeds": [0, 1, 2],
    "eval_splits": ["shift"],
}
# variant -> seed -> val top-1 per epoch, and the shifted split's top-1.
CURVES = {
    "ViT": {0: [0.3, 0.5, 0.5], 1: [0.4, 0.6, 0.6], 2: [0.5, 0.7, 0.7]},
    "I-ViT": {0: [0.5, 0.6, 0.7], 1: [0.6, 0.7, 0.8], 2: [0.7, 0.8, 0.9]},
}
SHIFT = {"ViT": {0: 0.2, 1: 0.3, 2: 0.4}, "I-ViT": {0: 0.4, 1: 0.4, 2: 0.7}}


def write_member(root: Path, member, curve: list[float], shift: float | None, done=True) -> None:
    run = member_dir(root, member)
    run.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"epoch": i + 1, "val_top1": v}) for i, v in enumerate(curve)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if shift is not None:
        (run / "eval-shift.json").write_text(json.dumps({"top1": shift, "split": "shift"}))
    if done:
        (run / DONE).write_text(json.dumps({"fingerprint": member.fingerprint()}))


def test_grid_crosses_teachers_only_for_aligning_variants() -> None:
    spec = ExperimentSpec.model_validate(SPEC)
    grid = members(spec)
    assert [(m.row, m.seed) for m in grid] == [
        ("ViT", 0),
        ("ViT", 1),
        ("ViT", 2),
        ("I-ViT [box]", 0),
        ("I-ViT [box]", 1),
        ("I-ViT [box]", 2),
    ]
    assert len({m.name for m in grid}) == 6
    changed = ExperimentSpec.model_validate({**SPEC, "base": {"epochs": 4}})
    assert {m.name for m in members(changed)}.isdisjoint({m.name for m in grid})


def test_bad_specs_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown train parameters.*'lamda'"):
        ExperimentSpec.model_validate({**SPEC, "variants": {"ViT": {"lamda": 1}}})
    with pytest.raises(ValueError, match="baseline 'nope'"):
        ExperimentSpec.model_validate({**SPEC, "baseline": "nope"})
    with pytest.raises(ValueError, match="set by the experiment"):
        ExperimentSpec.model_validate({**SPEC, "base": {"seed": 3}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*mapping"):
        load_spec(bad)


def test_seeds_aggregate_to_hand_computed_mean_and_std(tmp_path: Path) -> None:
    spec = ExperimentSpec.model_validate(SPEC)
    for member in members(spec):
        write_member(
            tmp_path,
            member,
            CURVES[member.variant][member.seed],
            SHIFT[member.variant][member.seed],
        )
    results = aggregate(spec, tmp_path)
    rows = {r["row"]: r["cells"]["1"] for r in results["rows"]}
    # ViT finals 0.5, 0.6, 0.7: mean 0.6, sample std sqrt(((.1)^2 + 0 + (.1)^2) / 2) = 0.1.
    assert rows["ViT"]["val_top1"]["mean"] == pytest.approx(0.6)
    assert rows["ViT"]["val_top1"]["std"] == pytest.approx(0.1)
    assert rows["I-ViT [box]"]["val_top1"]["mean"] == pytest.approx(0.8)
    # shift: 0.4, 0.4, 0.7 -> mean 0.5, std sqrt((0.01 + 0.01 + 0.04) / 2) = sqrt(0.03).
    assert rows["I-ViT [box]"]["shift_top1"]["mean"] == pytest.approx(0.5)
    assert rows["I-ViT [box]"]["shift_top1"]["std"] == pytest.approx(0.03**0.5)
    assert rows["ViT"]["shift_top1"]["std"] == pytest.approx(0.1)
    # Convergence: ViT's mean curve is 0.4, 0.6, 0.6 (best 0.6 at epoch 2); I-ViT's mean curve
    # 0.6, 0.7, 0.8 reaches 0.6 at epoch 1.
    curves = results["convergence"]["curves"]
    assert curves["ViT"]["mean"] == pytest.approx([0.4, 0.6, 0.6])
    assert curves["I-ViT [box]"]["baseline_best"] == pytest.approx(0.6)
    assert curves["I-ViT [box]"]["baseline_best_epoch"] == 2
    assert curves["I-ViT [box]"]["epochs_to_baseline_best"] == 1
    assert curves["ViT"]["epochs_to_baseline_best"] == 2
    assert results["missing"] == []

    markdown = results_markdown(results)
    # Paired by seed: val differences 0.2, 0.2, 0.2 (se 0); shift 0.2, 0.1, 0.3 -> mean 0.2,
    # se = std 0.1 / sqrt(3) = 0.0577.
    assert (
        "| I-ViT | box | 80.00 ± 10.00 (+20.0 ± 0.0 se) | 50.00 ± 17.32 (+20.0 ± 5.8 se) | 3 of 3 |"
        in markdown
    )
    paths = write_report(results, tmp_path)
    assert json.loads(paths["results.json"].read_text())["rows"][0]["row"] == "ViT"
    assert paths["convergence.png"].stat().st_size > 1000


def test_unfinished_members_are_left_out_and_listed(tmp_path: Path) -> None:
    spec = ExperimentSpec.model_validate(SPEC)
    grid = members(spec)
    write_member(tmp_path, grid[0], [0.1, 0.2, 0.3], 0.1)
    write_member(tmp_path, grid[1], [0.9, 0.9, 0.9], 0.9, done=False)  # stopped mid-way
    results = aggregate(spec, tmp_path)
    vit = results["rows"][0]["cells"]["1"]["val_top1"]
    assert vit["n"] == 1 and vit["mean"] == pytest.approx(0.3)
    assert grid[1].name in results["missing"] and len(results["missing"]) == 5


def test_domains_are_tabled_per_domain(tmp_path: Path) -> None:
    spec = ExperimentSpec.model_validate({**SPEC, "eval_splits": [], "seeds": [0, 1]})
    for member in members(spec):
        run = member_dir(tmp_path, member)
        run.mkdir(parents=True)
        acc = {"art": 0.5 + 0.1 * member.seed, "sketch": 0.3}
        (run / "metrics.jsonl").write_text(json.dumps({"val_top1": 0.4, "val_domains": acc}) + "\n")
        (run / DONE).write_text(json.dumps({"fingerprint": member.fingerprint()}))
    results = aggregate(spec, tmp_path)
    cell = results["rows"][0]["cells"]["1"]["domains"]["val"]
    assert cell["domains"]["art"]["mean"] == pytest.approx(0.55)
    assert cell["variance"] == pytest.approx(((0.55 - 0.425) ** 2 + (0.3 - 0.425) ** 2) / 2)
    assert "## Per domain: val" in results_markdown(results)


@pytest.mark.slow
def test_flow_resumes_without_rerunning_finished_members(
    tmp_path: Path, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.experiment as experiment

    spec_file = tmp_path / "handmade.yaml"
    spec_file.write_text(yaml.safe_dump({**SPEC, "seeds": [0, 1]}, sort_keys=False))
    spec = load_spec(spec_file)
    grid = members(spec)
    out = tmp_path / "out"
    root = out / spec.name
    write_member(root, grid[0], CURVES["ViT"][0], SHIFT["ViT"][0])  # finished before the flow
    stale = grid[2]  # a record of an older spec: its fingerprint no longer matches
    write_member(root, stale, [0.0, 0.0, 0.0], 0.0, done=False)
    (member_dir(root, stale) / DONE).write_text(json.dumps({"fingerprint": "older"}))

    trained: list[tuple[str, str | None]] = []

    def fake_train(spec, member, cache_entry, root, params) -> None:
        trained.append((member.name, cache_entry))
        write_member(
            root,
            member,
            CURVES[member.variant][member.seed],
            SHIFT[member.variant][member.seed],
            done=False,
        )

    monkeypatch.setattr(experiment, "train_member", fake_train)
    params = experiment.ExperimentParams(spec=str(spec_file), out_root=str(out))
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        first = experiment.experiment_flow(params)
        assert sorted(trained) == sorted((m.name, m.teacher and "/nowhere/entry") for m in grid[1:])
        trained.clear()
        second = experiment.experiment_flow(params)
    assert trained == [] and second["ran"] == [] and first["missing"] == []
    results = json.loads((root / "results.json").read_text())
    assert results["rows"][1]["cells"]["1"]["val_top1"]["mean"] == pytest.approx(0.75)
    assert (root / "convergence.png").is_file() and (root / "results.md").is_file()


def test_a_member_without_an_asked_evaluation_is_not_finished(tmp_path: Path) -> None:
    """A split added to a spec after its members trained: they are listed as missing (the flow
    re-runs them, resuming their finished training), not read as if the file were there."""
    spec = ExperimentSpec.model_validate(SPEC)
    grid = members(spec)
    write_member(tmp_path, grid[0], [0.1, 0.2, 0.3], shift=None)
    write_member(tmp_path, grid[1], [0.1, 0.2, 0.3], shift=0.5)
    results = aggregate(spec, tmp_path)
    assert grid[0].name in results["missing"] and grid[1].name not in results["missing"]


def test_convergence_is_measured_at_every_fraction(tmp_path: Path) -> None:
    """Epochs to reach the baseline's best, per data fraction, against hand-made curves."""
    spec = ExperimentSpec.model_validate(
        {**SPEC, "fractions": [1.0, 0.1], "seeds": [0], "eval_splits": []}
    )
    curves = {
        ("ViT", 1.0): [0.5, 0.8, 0.8],
        ("I-ViT", 1.0): [0.6, 0.7, 0.9],  # reaches 0.8 at epoch 3
        ("ViT", 0.1): [0.2, 0.3, 0.4],
        ("I-ViT", 0.1): [0.4, 0.5, 0.5],  # reaches 0.4 at epoch 1
    }
    for member in members(spec):
        write_member(tmp_path, member, curves[(member.variant, member.fraction)], shift=None)
    results = aggregate(spec, tmp_path)
    by_fraction = results["convergence_by_fraction"]
    assert by_fraction["1"]["curves"]["I-ViT [box]"]["epochs_to_baseline_best"] == 3
    assert by_fraction["0.1"]["curves"]["I-ViT [box]"]["epochs_to_baseline_best"] == 1
    assert by_fraction["0.1"]["curves"]["I-ViT [box]"]["baseline_best"] == pytest.approx(0.4)
    assert results["convergence"] == by_fraction["1"]  # the headline figure: all the data
    markdown = results_markdown(results)
    assert "| I-ViT [box] | 3 (best 90.0 vs 80.0) | 1 (best 50.0 vs 40.0) |" in markdown
    assert write_report(results, tmp_path)["convergence.png"].stat().st_size > 1000


def test_fraction_params_reach_only_their_fraction() -> None:
    spec = ExperimentSpec.model_validate(
        {**SPEC, "fractions": [1.0, 0.01], "fraction_params": {0.01: {"batch": 4}}}
    )
    batches = {(m.variant, m.fraction): m.params.get("batch") for m in members(spec)}
    assert batches[("ViT", 0.01)] == 4 and batches[("I-ViT", 0.01)] == 4
    assert batches[("ViT", 1.0)] is None  # the base's (the train flow's default)
    with pytest.raises(ValueError, match=r"fraction_params: \[1\.5\] are not fractions"):
        ExperimentSpec.model_validate({**SPEC, "fraction_params": {1.5: {"batch": 4}}})
    narrowed = ExperimentSpec.model_validate({**SPEC, "fraction_params": {0.5: {"batch": 4}}})
    assert all("batch" not in m.params for m in members(narrowed))  # 0.5 is not in the grid
    with pytest.raises(ValueError, match=r"fraction_params\[1\]: unknown train parameters"):
        ExperimentSpec.model_validate({**SPEC, "fraction_params": {1.0: {"bach": 4}}})


def test_differences_with_per_image_hits_are_bootstrapped_over_seeds_and_images(
    tmp_path: Path,
) -> None:
    """Where evaluations kept per-image hits, the difference to the baseline is paired by seed
    and its error is the bootstrap over seeds and images (experiments.stats, tested on its
    own); where they did not, the error is over seeds only."""
    spec = ExperimentSpec.model_validate(SPEC)
    hits = {  # variant -> seed -> hits on images k0..k3
        "ViT": {0: [1, 0, 0, 0], 1: [1, 1, 0, 0], 2: [0, 1, 0, 0]},
        "I-ViT": {0: [1, 1, 1, 0], 1: [1, 1, 0, 1], 2: [1, 1, 1, 1]},
    }
    for member in members(spec):
        row = hits[member.variant][member.seed]
        write_member(tmp_path, member, CURVES[member.variant][member.seed], sum(row) / 4)
        record = {"top1": sum(row) / 4, "hits": {f"k{i}": h for i, h in enumerate(row)}}
        (member_dir(tmp_path, member) / "eval-shift.json").write_text(json.dumps(record))
    cell = aggregate(spec, tmp_path)["rows"][1]["cells"]["1"]
    shift = cell["shift_top1"]["vs_baseline"]
    # I-ViT 3/4, 3/4, 4/4 against ViT 1/4, 2/4, 1/4: differences 2/4, 1/4, 3/4, mean 0.5.
    assert shift["mean"] == pytest.approx(0.5) and shift["se_over"] == "seeds and images"
    want = bootstrap_se(
        np.array(list(hits["I-ViT"].values())), np.array(list(hits["ViT"].values()))
    )
    assert shift["se"] == pytest.approx(want)
    val = cell["val_top1"]["vs_baseline"]  # no per-image hits in metrics.jsonl
    assert val["mean"] == pytest.approx(0.2) and val["se_over"] == "seeds"
    assert val["se"] == pytest.approx(0.0)  # 0.2 on every seed


def test_an_eval_split_of_val_is_one_column(tmp_path: Path) -> None:
    """Scoring val again (for its per-image hits) does not add a second val column."""
    spec = ExperimentSpec.model_validate({**SPEC, "eval_splits": ["val"], "seeds": [0]})
    for member in members(spec):
        write_member(tmp_path, member, CURVES[member.variant][0], shift=None)
        (member_dir(tmp_path, member) / "eval-val.json").write_text(json.dumps({"top1": 0.5}))
    header = results_markdown(aggregate(spec, tmp_path)).splitlines()[4]
    assert header == "| Model | Teacher | val top-1 (%) | seeds done |"
