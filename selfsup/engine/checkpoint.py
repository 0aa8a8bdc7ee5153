"""Deprecated: moved to selfsup.runs.checkpoint (and selfsup.atomic). This path goes in the next release."""
from .._moved import moved

__getattr__ = moved(__name__, "selfsup.runs.checkpoint", "selfsup.atomic")
