"""Quality benchmarks on MovieLens-100k, RecBole's split (a): the two-tower model alone against
popularity, with live and train-only history (``movielens``), and the two-stage system
(retrieval -> ranker) from the bundle against retrieval alone (``two_stage``)."""
