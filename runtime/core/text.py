"""Small wording helpers for messages: counts with the right plural, "a" or "an", file sizes.

One place for these so every message says "1 file" and "an int8 file", and every size is in
the same unit (MB, 10**6 bytes, as ``attnmap info`` prints it).
"""

from __future__ import annotations

_VOWEL_SOUNDS = ("a", "e", "i", "o", "u")
# words that start with a vowel letter but a consonant sound, or the other way round
_AN_EXCEPTIONS = {"fp16": "an", "fp32": "an", "mp4": "an", "mpeg": "an", "mjpeg": "an", "hdr": "an",
                  "onnx": "an", "rgb": "an", "svg": "an", "x": "an"}
_A_EXCEPTIONS = ("uni", "use", "usa", "one")


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``"1 file"``, ``"2 files"``, ``"0 files"``.

    Args:
        n: the count.
        noun: the singular noun.
        many: the plural when it is not ``noun + "s"``.
    """
    return f"{n} {noun if n == 1 else (many or noun + 's')}"


def article(word: str) -> str:
    """``word`` with "a" or "an" in front: ``"an int8"``, ``"a video"``, ``"an fp16"``, by its first sound."""
    w = str(word)
    low = w.lower()
    if low in _AN_EXCEPTIONS:
        return f"{_AN_EXCEPTIONS[low]} {w}"
    if low.startswith(_A_EXCEPTIONS):
        return f"a {w}"
    return f"{'an' if low[:1] in _VOWEL_SOUNDS else 'a'} {w}"


def megabytes(size_bytes: int | float) -> str:
    """A file size in MB (10**6 bytes), one decimal: ``"5.7 MB"``."""
    return f"{size_bytes / 1e6:.1f} MB"
