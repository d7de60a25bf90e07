"""tailored.train: the two-tower model, its Lightning training task, offline evaluation."""
