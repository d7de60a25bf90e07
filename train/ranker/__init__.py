"""tailored.train.ranker: the re-ranker over the two-tower model's candidates. The network
(:mod:`.model`), its requests and candidate lists (:mod:`.data`), the Lightning task and the
ensemble's training loop (:mod:`.task`), fitting it on a run (:mod:`.fit`) and its ONNX
export (:mod:`.export`)."""
