"""Message wording: counts with their plural, "a" or "an", one size unit."""

import pytest

from attnmap.runtime.core.text import article, megabytes, plural


@pytest.mark.parametrize("n, want", [(0, "0 files"), (1, "1 file"), (2, "2 files"), (11, "11 files")])
def test_plural_follows_the_count(n, want):
    assert plural(n, "file") == want


def test_plural_takes_an_irregular_form():
    assert plural(1, "class", "classes") == "1 class" and plural(3, "class", "classes") == "3 classes"


@pytest.mark.parametrize("word, want", [("int8", "an int8"), ("fp16", "an fp16"), ("fp32", "an fp32"),
                                        ("video", "a video"), ("image", "an image"), ("JPEG", "a JPEG"),
                                        ("unit", "a unit")])
def test_article_goes_by_the_first_sound(word, want):
    assert article(word) == want


def test_megabytes_is_the_unit_info_uses():
    assert megabytes(5_700_000) == "5.7 MB"
    assert megabytes(2**20) == "1.0 MB"  # 1 MiB is 1.05 MB: the unit is 10**6 bytes, as `attnmap info` says
