"""tailored.serve: the gRPC service over a loaded bundle, with no torch in the process.

* :mod:`.server`: the servicers (Recommend, Track, SetConsent, Admin) and ``create_server``;
  :mod:`.edge` checks the proto messages; :mod:`.recommender` is the request path of one
  loaded bundle; :mod:`.diversity` re-orders a result.
* :mod:`.bundles`: the bundle being served, swapped atomically; :mod:`.state` and its
  backends (:mod:`.sqlite_state`, :mod:`.redis_state`): the users' online state.
* :mod:`.app`: the serving process assembled (``tailored serve``, and the workers that
  :mod:`.workers` supervises); :mod:`.client`, :mod:`.demo`: a client and ``make demo``'s end.

It imports the bundle's format and runtime, retrieval's indexes and data's features, never
training (import-linter's contracts in ``pyproject.toml``).
"""
