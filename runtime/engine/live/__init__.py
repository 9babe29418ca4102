"""A live session (``session.py``), what its keys change (``state.py``), what it reports
(``stats.py``): the part of a real-time front that does not depend on where frames are shown."""
