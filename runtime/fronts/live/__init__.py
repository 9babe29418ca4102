"""The live view: the loop (``loop.py``), what its keys change (``state.py``), what it reports
(``stats.py``)."""

# Here, not in state.py, so that the CLI can show it in `attnmap live --help` without loading OpenCV.
KEY_HELP = "m method   [ ] layer   h head   c colours   f fit   space pause   s snapshot   q quit"
