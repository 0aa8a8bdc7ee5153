"""The application layer: what a user asks for, end to end. Building a method from config and
training it (:mod:`.train`); evaluate, finetune, zeroshot, embed and export; report; bench; demo.
``selfsup.cli`` and ``selfsup/__init__`` import only from here and the public types.
Import the entry points from their modules (``selfsup.app.train.train``,
``selfsup.app.evaluate.evaluate``, ...); ``import selfsup.app`` loads nothing.
"""
