"""Scale benchmarks on the synthetic website: generation time, memory and disk
(``synth_scale``), training throughput and what was learned against the planted truth
(``train_throughput``), and the batch embedding refresh of 1M items (``refresh_throughput``)."""
