"""Deprecated: moved to selfsup.app.train and selfsup.engine.loop and selfsup.engine.batches. This path goes in the next release."""
from .._moved import moved

__getattr__ = moved(__name__, "selfsup.app.train", "selfsup.engine.loop", "selfsup.engine.batches")
