"""The live view (``loop.py``): a window and a recorder around the engine's live session
(:mod:`attnmap.runtime.engine.live`)."""

# Here, not beside the session, so that the CLI can show it in `attnmap live --help` without loading OpenCV.
KEY_HELP = "m method   [ ] layer   h head   c colours   f fit   space pause   s snapshot   q quit"
