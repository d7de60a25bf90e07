"""tailored.train: the models and their training, with the offline evaluation beside them.

* :mod:`~tailored.train.two_tower`: the retrieval model, trained by ``tailored train``.
* :mod:`~tailored.train.ranker`: the re-ranker, trained on a run's own candidates.
* :mod:`~tailored.train.runs`: the run directory training writes and the others read.
* :mod:`~tailored.train.evaluate`, :mod:`~tailored.train.metrics`: full-ranking offline
  evaluation; :mod:`~tailored.train.truth`: recall against a synthetic site's planted truth.
* :mod:`~tailored.train.onnx`: export to ONNX and the torch-vs-onnxruntime check.

Imports torch and Lightning; it imports only ``data`` and the floor of tailored.
"""
