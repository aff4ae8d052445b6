"""Thin Prefect flows over the packages below (DESIGN 6): extraction and training.

Prefect reads its settings at import time, so the project's defaults (a Prefect home inside
`data/`, no analytics) are set here, before any flow module imports prefect.
"""

import os

from pipeline.paths import data_dir

os.environ.setdefault("PREFECT_HOME", str(data_dir() / "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
