"""Deprecated: moved to selfsup.app.export. This path goes in the next release."""
from .._moved import moved

__getattr__ = moved(__name__, "selfsup.app.export")
