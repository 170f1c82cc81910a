"""Maximum-inner-product retrieval over item vectors.

``exact`` holds the jitted exact top-k (the reference) and the recall of an approximate top-k
against it; ``scann_index`` builds, searches, saves and loads ScaNN indexes (the ``retrieval``
extra: ``pip install -e ".[retrieval]"``).
"""
