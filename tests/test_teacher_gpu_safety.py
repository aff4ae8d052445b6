"""Safe on a GPU: no silent CPU fallback for real teachers, bf16 by default, fp32 row scores,
and a run with too many non-finite rows fails with the count."""

from __future__ import annotations

import shutil

import pytest
import teacher_fixtures
import torch
from teacher_fixtures import VOCABULARY

from teacher import TeacherConfig, TeacherDeviceError, load_teacher
from teacher.maps.capture import RowCapture
from teacher.maps.numerics import NonFiniteRowsError, check_non_finite

tiny_dir = teacher_fixtures.tiny_dir
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less path")


@needs_no_gpu
def test_real_teacher_without_gpu_stops_unless_cpu_is_asked(tiny_dir, tmp_path):
    real = tmp_path / "not-tiny"  # the same files without the tiny marker: a "real" checkpoint
    shutil.copytree(tiny_dir, real)
    (real / "TINY_TEACHER.json").unlink()
    with pytest.raises(TeacherDeviceError, match=r"CUDA.*--device cpu"):
        load_teacher(TeacherConfig(model=str(real), quant="none"), VOCABULARY)
    # The flow's device pool hands out "cpu" on this machine: it must not override "auto".
    from flows.runtime import get_teacher

    with pytest.raises(TeacherDeviceError):
        get_teacher(TeacherConfig(model=str(real), quant="none"), VOCABULARY, "cpu")
    explicit = load_teacher(TeacherConfig(model=str(real), quant="none", device="cpu"), VOCABULARY)
    assert explicit.model.device.type == "cpu"
    # Tiny teachers still run anywhere; "auto" dtype is float32 on a CPU, and the spec says so.
    tiny = load_teacher(TeacherConfig(model=str(tiny_dir), quant="none"), VOCABULARY)
    assert tiny.model.dtype == torch.float32 and tiny.spec()["dtype"] == "float32"


def test_row_scores_are_float32_where_fp16_would_overflow():
    """q.k = 160000 overflows fp16 (max 65504); the captured row must still be the softmax."""
    query = torch.full((1, 1, 2, 4), 200.0, dtype=torch.float16)
    key = torch.full((1, 1, 2, 4), 200.0, dtype=torch.float16)
    key[0, 0, 0] = 199.0  # two different logits: 0.5 * 4 * 200 * (199, 200)
    capture = RowCapture(
        prefill_rows=torch.tensor([[1]]), image_start=torch.tensor([0]), num_image_tokens=2,
        prompt_length=2, layers=[0], heads=None,
    )  # fmt: skip
    capture.record(0, query, key, None, scaling=0.5)
    row = capture.row(0, 1).double()
    logits = torch.tensor([0.5 * 4 * 200 * 199, 0.5 * 4 * 200 * 200], dtype=torch.float64)
    assert torch.isfinite(row).all()
    torch.testing.assert_close(row, logits.softmax(0), atol=1e-6, rtol=0)


def test_too_many_non_finite_rows_fail_with_the_count():
    check_non_finite(1, 1000, 0.01)  # a stray row is tolerated
    with pytest.raises(NonFiniteRowsError, match="37 of 1000 rows"):
        check_non_finite(37, 1000, 0.01)
    check_non_finite(0, 0, 0.0)  # a run with nothing to do
