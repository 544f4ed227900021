"""A corpus of malformed and hostile tensor files (see make_corpus.py)."""
