"""Deprecated: moved to selfsup.distributed. This path goes in the next release."""
from .._moved import moved

__getattr__ = moved(__name__, "selfsup.distributed")
