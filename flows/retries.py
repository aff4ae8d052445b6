"""When a failed Prefect task is worth retrying: not when the user must act first.

A checkpoint missing offline stays missing on the next try; retrying only repeats the same
error (and its traceback) after a delay. Tasks that load weights pass this as
`retry_condition_fn`, so their retries still cover transient failures (a busy shared cache).
"""

from __future__ import annotations

from typing import Any


def user_errors() -> tuple[type[Exception], ...]:
    # Imported on a failure only: flows.extract stays free of timm and transformers at import.
    from student.backbone_weights import WeightsUnavailableError
    from teacher.hub_weights import TeacherWeightsError

    return (TeacherWeightsError, WeightsUnavailableError)


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: False for errors that only the user can fix. Prefect hands
    it the Failed state whose data is the task's exception."""
    return not isinstance(state.data, user_errors())
