"""When a failed Prefect task is worth retrying: not when the user must act first.

A checkpoint missing offline stays missing on the next try; retrying only repeats the same
error (and its traceback) after a delay. Tasks that load weights pass this as
`retry_condition_fn`, so their retries still cover transient failures (a busy shared cache).
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import UserError


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: False for errors that only the user can fix
    (`pipeline.errors.UserError`: missing weights, inputs, bad parameters). Prefect hands it
    the Failed state whose data is the task's exception."""
    return not isinstance(state.data, UserError)
