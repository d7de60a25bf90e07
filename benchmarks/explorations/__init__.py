"""One-off studies on MovieLens-100k that explored a choice or answered one question:
configuration variants in parallel (``movielens_sweep``, with its variants file under
``sweeps/``) or one at a time (``movielens_variant``), the item-item model behind the ranker's
``ease_score`` feature alone (``movielens_ease``), and recent popularity as a ranker feature
(``movielens_recent_popularity``); ``_movielens`` loads split (a) for the last two."""
