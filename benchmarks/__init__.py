"""The project's benchmarks, grouped by concern: :mod:`benchmarks.serving` (the gRPC service,
the index and the ranker at serving time), :mod:`benchmarks.quality` (recommendation quality
on MovieLens-100k), :mod:`benchmarks.scale` (the synthetic website's generation, training and
embedding refresh at scale) and :mod:`benchmarks.explorations` (one-off studies: sweeps,
variants, single questions). Each script runs as ``python -m benchmarks.<group>.<name>`` and
writes JSON to ``benchmarks/results/``; the current figures are in ``benchmarks/RESULTS.md``.
Helpers used by several groups live here (``_machine``, ``_overrides``, ``_paths``)."""
