"""Thin Prefect flows over the packages below (docs/design.md): extraction and training.

Prefect reads its settings at import time, so the project's defaults (a Prefect home inside
`data/`, no analytics, logs) are set here, before any flow module imports prefect.

Logs: runs send their INFO lines to the Prefect API (each run's Logs tab in the UI), while the
console shows warnings and errors only; `PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=INFO` shows all.
"""

import os

from pipeline.paths import prefect_home

os.environ.setdefault("PREFECT_HOME", str(prefect_home()))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")  # what reaches the API (the UI)
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # the terminal
