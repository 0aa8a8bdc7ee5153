"""The engine: :func:`~selfsup.engine.loop.fit` (the loop), batches, optimisers and the hook
protocol. It imports neither ``methods`` nor ``eval``; the app layer passes a method and hooks in.
(``engine.train``, ``engine.export``, ``engine.checkpoint``, ``engine.rundir``, ``engine.dist`` and
``engine.schedule`` are deprecated shims to the new homes.)"""
