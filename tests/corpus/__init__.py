"""A generated corpus of bad (and a few good) inputs; see ``make_corpus.py``."""
