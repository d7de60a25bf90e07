"""tailored.train.two_tower: the retrieval model. The towers (:mod:`.model`), batches
(:mod:`.data`), the sampled-softmax loss (:mod:`.loss`), the Lightning task (:mod:`.task`),
``tailored train`` (:mod:`.fit`) and the user tower's ONNX export (:mod:`.export`)."""
