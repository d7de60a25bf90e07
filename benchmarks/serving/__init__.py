"""Serving benchmarks: the gRPC service under load against a no-op server's ceiling
(``serve_load``, with its helpers ``_bundle``, ``_client``, ``_noop``, ``_procs`` and
``_profile``, and the ``[serve]`` files under ``configs/``), the index at serving depth on the
served embeddings (``serve_index_sweep``), the request path's native calls batched or not
(``serve_batching``), the ranker's latency in onnxruntime (``ranker_latency``) and the item
indexes at 1M x 64 (``index_bench``)."""
