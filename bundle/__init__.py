"""tailored.bundle: the versioned directory that serving loads, above training and retrieval.

* :mod:`~tailored.bundle.format`: the file names, the manifest and its verification, the
  all-or-nothing writer and the safe readers (no pickles). numpy only.
* :mod:`~tailored.bundle.runtime`: :class:`~tailored.bundle.runtime.LoadedBundle`, a verified
  bundle loaded for requests: user tower and ranker in onnxruntime, the index, item and user
  tables. No torch.
* :mod:`~tailored.bundle.build`: writing a bundle from a training run (``tailored bundle
  build``, which trains the ranker) or from a bundle (``tailored refresh``). Imports torch.
* :mod:`~tailored.bundle.evaluate`: the two-stage offline evaluation of a bundle
  (``tailored evaluate BUNDLE``).

Importing this package imports none of them; serving imports only the format and the runtime.
"""
