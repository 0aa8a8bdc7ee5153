"""Deprecated: moved to selfsup.app.evaluate (``load_backbone`` to selfsup.runs). This path goes in the next release."""
from .._moved import moved

__getattr__ = moved(__name__, "selfsup.app.evaluate", "selfsup.runs", renamed={"rundir_json": "run_config"})
