"""What a folder or glob holds: still images, videos and the rest, told apart by extension.

A still GIF is an image and an animated one a video (its blocks are counted, nothing is
decoded). :func:`list_files` sorts a directory or glob source's files into these, and
:class:`Listing` says in one line what a run leaves out, so that nothing is skipped without a
word.
"""

from __future__ import annotations

import glob as _glob
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from attnmap.runtime.core.errors import SourceError
from attnmap.runtime.core.text import plural
from attnmap.runtime.frames.frame import SourceRef
from attnmap.runtime.image.header import HeaderError, gif_frame_count

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                        ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr",
                        ".pic", ".avif"})
VIDEO_EXTS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv",
                        ".flv", ".gif", ".ts", ".mts", ".3gp", ".ogv", ".y4m"})


def file_kind(path: str | os.PathLike) -> str | None:
    """``"image"``, ``"video"`` or None (neither) for a file, by its extension.

    A ``.gif`` is an image when it holds one frame and a video when it is animated (its
    blocks are counted, nothing is decoded).
    """
    ext = Path(path).suffix.lower()
    if ext == ".gif":
        try:
            with open(path, "rb") as f:
                return "video" if gif_frame_count(f.read(), stop=2) > 1 else "image"
        except (OSError, HeaderError):
            return "image"  # the image reader then says what is wrong with it
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


@dataclass
class Listing:
    """What a directory or glob holds, sorted by name.

    Attributes:
        spec: the directory or glob as given.
        kind: ``"directory"`` or ``"glob"``.
        images: still image files (still GIFs among them).
        videos: video files (animated GIFs among them).
        other: how many other files there are per extension (``""`` for none), and
            ``"folder"`` for subfolders of a directory (not read: a directory is not recursive).
    """

    spec: str
    kind: str
    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    other: Counter = field(default_factory=Counter)

    def skip_note(self, videos: bool) -> str:
        """One line on what a run that takes the images (and with ``videos`` the videos) leaves out,
        e.g. ``"skipped 3 files: 2 .txt, 1 without extension"``; ``""`` when nothing is left out."""
        parts = [] if videos or not self.videos else [f"{plural(len(self.videos), 'video')} "
                                                      f"({_exts(Counter(_ext(p) for p in self.videos))}; "
                                                      "still images only here)"]
        files = Counter({k: v for k, v in self.other.items() if k != "folder"})
        if files:
            parts.append(f"{plural(sum(files.values()), 'file')} that "
                         f"{'is' if sum(files.values()) == 1 else 'are'} neither image nor video ({_exts(files)})")
        if self.other.get("folder"):
            parts.append(f"{plural(self.other['folder'], 'folder')} (not read: a folder is not searched recursively)")
        return "skipped " + "; ".join(parts) if parts else ""

    def empty_reason(self, videos: bool) -> str:
        """Why nothing of this listing can be explained (the message of its SourceError)."""
        wanted = "image or video files" if videos else "image files"
        held = self.skip_note(videos).replace("skipped ", "only ", 1)
        if self.kind == "directory":
            return (f"directory {self.spec!r} holds no {wanted}{': ' + held if held else ''} "
                    f"(expected {', '.join(('jpg', 'png', 'bmp', 'webp'))} ...)")
        return f"glob {self.spec!r} matched {held or 'nothing'}; expected {wanted}"


def list_files(ref: SourceRef) -> Listing:
    """Sort the files of a directory or glob source into images, videos and the rest.

    Hidden files (``.name``) are left out without a word, as ``ls`` does: they include the
    run manifest and temp files attnmap itself writes into an output folder.

    Raises:
        SourceError: the directory cannot be listed.
    """
    listing = Listing(ref.spec, ref.kind)
    if ref.kind == "directory":
        try:
            names = sorted(os.listdir(ref.target))
        except OSError as exc:
            raise SourceError(f"directory {ref.spec!r} cannot be listed: {exc.strerror or exc}") from exc
        paths = [os.path.join(ref.target, n) for n in names if not n.startswith(".")]
    else:
        paths = sorted(_glob.glob(os.path.expanduser(ref.target), recursive=True))
    for p in paths:
        if not os.path.isfile(p):
            if ref.kind == "directory" and os.path.isdir(p):
                listing.other["folder"] += 1
            continue
        kind = file_kind(p)
        if kind == "image":
            listing.images.append(p)
        elif kind == "video":
            listing.videos.append(p)
        else:
            listing.other[_ext(p)] += 1
    return listing


def _ext(path: str) -> str:
    return Path(path).suffix.lower()


def _exts(counts: Counter) -> str:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] == "", kv[0]))  # most first, then by name
    return ", ".join(f"{n} {ext or 'without extension'}" for ext, n in ranked)
