"""Deprecated: moved to selfsup.runs.folder. This path goes in the next release."""
from .._moved import moved

__getattr__ = moved(__name__, "selfsup.runs.folder")
