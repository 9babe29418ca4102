"""Image file headers: the format, the declared size and how to decode, from the header bytes alone.

:func:`read_header` reads only what each format puts before its pixel data (PNG's IHDR chunk,
JPEG's frame header, a TIFF's first directory ...) and never decompresses anything, so a
decompression bomb (a few hundred bytes that declare 60000 x 60000 pixels) can be refused by
its declared size before any decoder allocates it. It also tells :mod:`decode` whether
OpenCV's ``IMREAD_COLOR`` reads the file as intended, or whether it must be decoded
``IMREAD_UNCHANGED`` and finished here: alpha or a transparent colour to composite, 16-bit
samples to scale, an EXIF orientation that ``IMREAD_UNCHANGED`` leaves unapplied.

Formats: the ones this OpenCV build decodes, i.e. PNG, JPEG, BMP, GIF, WebP, TIFF (and
BigTIFF), PNM/PAM/PFM, Sun raster, Radiance HDR, JPEG 2000 (JP2 or raw codestream) and AVIF.
"""

from __future__ import annotations

import zlib

from dataclasses import dataclass
from collections.abc import Iterator

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PNM", "SUN", "HDR", "JPEG2000", "AVIF")
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
# first bytes of files that are often renamed to .png or .jpg by mistake
_NOT_IMAGES = ((b"%PDF", "a PDF document"), (b"<svg", "an SVG drawing (vector, not raster)"),
               (b"<?xml", "an XML (or SVG) document"), (b"<!doctype html", "an HTML page"),
               (b"<html", "an HTML page"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip archive"),
               (b"{", "JSON text"), (b"\x76\x2f\x31\x01", "an OpenEXR image, which this OpenCV build does not read"))


class HeaderError(ValueError):
    """The bytes are not an image header this module reads; the message is the reason."""


@dataclass(frozen=True)
class Header:
    """What a file's header declares.

    Attributes:
        format: one of :data:`FORMATS`.
        width: declared width in pixels (for GIF, the canvas its first frame needs).
        height: declared height in pixels.
        keep_alpha: decode with ``IMREAD_UNCHANGED`` and finish in NumPy: the file has alpha or
            a transparent colour, or 16-bit samples (``IMREAD_COLOR`` would drop the one and
            truncate the other).
        orientation: EXIF orientation (1-8) to apply after an ``IMREAD_UNCHANGED`` decode;
            1 where OpenCV applies it itself (``IMREAD_COLOR``, and TIFF in either mode).
        gray_key: PNG grayscale transparent sample value, in the units OpenCV decodes it to
            (0-255 for bit depths up to 8, raw 16-bit otherwise), or None.
        premultiplied: the colour OpenCV returns with alpha is already multiplied by it (8-bit
            TIFFs, which it reads through libtiff's RGBA interface, and associated-alpha TIFFs).
    """

    format: str
    width: int
    height: int
    keep_alpha: bool = False
    orientation: int = 1
    gray_key: int | None = None
    premultiplied: bool = False

    @property
    def pixels(self) -> int:
        """Declared pixel count, ``width * height``."""
        return self.width * self.height


def read_header(buf: memoryview | bytes) -> Header:
    """Read an image file's header.

    Args:
        buf: the whole file, or at least its header (a ``memoryview`` of a NumPy buffer
            avoids a copy).

    Returns:
        The :class:`Header`.

    Raises:
        HeaderError: not one of :data:`FORMATS`, a header cut short, or a zero dimension.
    """
    buf = memoryview(buf)
    if buf.format != "B" or buf.ndim != 1:
        buf = buf.cast("B")
    head = bytes(buf[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        header = _png(buf)
    elif head.startswith(b"\xff\xd8\xff"):
        header = _jpeg(buf)
    elif head.startswith(b"BM"):
        header = _bmp(buf)
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        header = _gif(buf)
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        header = _webp(buf)
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        header = _tiff(buf)
    elif len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"1234567Ff" and head[2:3] in b" \t\r\n":
        header = _pnm(buf)
    elif head[:4] == b"\x59\xa6\x6a\x95":
        header = Header("SUN", _int(buf, 4, 4), _int(buf, 8, 4))
    elif head.startswith((b"#?RADIANCE", b"#?RGBE")):
        header = _hdr(buf)
    elif head[:4] == b"\xff\x4f\xff\x51" or head[4:12] == b"jP  \r\n\x87\n":
        header = _jpeg2000(buf)
    elif head[4:8] == b"ftyp":
        header = _avif(buf)
    else:
        raise HeaderError(_unknown(head))
    if header.width <= 0 or header.height <= 0:
        raise HeaderError(f"its {header.format} header declares a zero or negative size "
                          f"{header.width} x {header.height}")
    return header


def describe_media(head: bytes) -> str | None:
    """What a file that should be something else holds, when its first bytes show a picture or video.

    Used where a model file is expected (``'dog.jpg' is a JPEG image, not an ONNX model``).

    Args:
        head: the file's first bytes (64 are plenty; an image header is read from what is there).

    Returns:
        ``"a JPEG image"``, ``"an MP4 video"`` ..., or None for anything else.
    """
    head = bytes(head)
    if head[4:8] == b"ftyp" and head[8:12] not in (b"avif", b"avis"):
        return "an MP4/QuickTime video"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "a Matroska/WebM video"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "an AVI video"
    try:
        fmt = read_header(head).format
    except (HeaderError, IndexError, ValueError):
        fmt = None
    if fmt is None:
        # a header cut short at 64 bytes still shows its format by its magic
        magic = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"))
        fmt = next((f for m, f in magic if head.startswith(m)), None)
        if fmt is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            fmt = "WEBP"
    if fmt is None:
        return None
    name = {"WEBP": "WebP", "JPEG2000": "JPEG 2000", "SUN": "Sun raster"}.get(fmt, fmt)
    return f"{'an' if name[0] in 'AEFHILMNORSX' else 'a'} {name} image"


def _unknown(head: bytes) -> str:
    text = head.lstrip().lower()
    for magic, what in _NOT_IMAGES:
        if text.startswith(magic.lower()):
            return f"it is not an image but {what} (it starts with {head[:12]!r})"
    return (f"it is not a PNG, JPEG, BMP, GIF, WebP, TIFF, PNM, Sun raster, HDR, JPEG 2000 or AVIF "
            f"image (it starts with {head[:12]!r})")


def _int(buf: memoryview, off: int, n: int, order: str = "big", signed: bool = False) -> int:
    if off < 0 or off + n > len(buf):
        raise HeaderError(f"the file ends inside its header ({len(buf)} bytes)")
    return int.from_bytes(buf[off:off + n], order, signed=signed)


# Valid (colour type -> bit depths) of the PNG specification, section 11.2.2.
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _png(buf: memoryview) -> Header:
    """The PNG's size and what decoding needs, after checking its chunk structure.

    libpng reports broken files by printing to the process's stderr before OpenCV returns its
    error, and no log level reaches it. So the structure is checked here first, cheaply (a
    CRC-32 per chunk): the IHDR fields against the specification, every chunk's length and
    CRC, a PLTE chunk for palette images, and the IEND chunk at the end. A file that fails
    is refused with the reason, and libpng never sees it.
    """
    if bytes(buf[12:16]) != b"IHDR" or _int(buf, 8, 4) != 13:
        raise HeaderError("PNG without an IHDR chunk first")
    w, h, depth, ctype = _int(buf, 16, 4), _int(buf, 20, 4), _int(buf, 24, 1), _int(buf, 25, 1)
    compression, filtering, interlace = _int(buf, 26, 1), _int(buf, 27, 1), _int(buf, 28, 1)
    if depth not in _PNG_DEPTHS.get(ctype, ()):
        raise HeaderError(f"PNG header has colour type {ctype} with bit depth {depth}, which PNG does not allow")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise HeaderError(f"PNG header has unknown compression {compression}, filter {filtering} or "
                          f"interlace {interlace} method")
    trns: bytes | None = None
    exif: bytes | None = None
    seen: set[bytes] = set()
    keep = ctype in (4, 6) or depth == 16
    pos = 8
    while True:
        if pos + 12 > len(buf):
            raise HeaderError(f"PNG is truncated: it ends after {len(buf)} bytes without its IEND chunk")
        n, kind = _int(buf, pos, 4), bytes(buf[pos + 4:pos + 8])
        if n > 0x7FFFFFFF or pos + 12 + n > len(buf):
            raise HeaderError(f"PNG is truncated: its {kind.decode('latin-1')!r} chunk runs past the end of the "
                              f"file ({len(buf)} bytes)")
        if zlib.crc32(buf[pos + 4:pos + 8 + n]) != _int(buf, pos + 8 + n, 4):
            raise HeaderError(f"PNG is damaged: the CRC of its {kind.decode('latin-1')!r} chunk at byte {pos} "
                              "does not match")
        if kind == b"IDAT" and ctype == 3 and b"PLTE" not in seen:
            raise HeaderError("PNG palette image without a PLTE chunk before its pixel data")
        if kind == b"tRNS" and trns is None:
            trns = bytes(buf[pos + 8:pos + 8 + n])
        elif kind == b"eXIf":
            exif = bytes(buf[pos + 8:pos + 8 + n])
        seen.add(kind)
        pos += 12 + n
        if kind == b"IEND":
            break
    if b"IDAT" not in seen:
        raise HeaderError("PNG without pixel data (no IDAT chunk)")
    keep = keep or trns is not None
    key = None
    if ctype == 0 and trns is not None and len(trns) >= 2:
        key = int.from_bytes(trns[:2], "big")
        if depth < 8:  # OpenCV expands 1/2/4-bit gray to 0-255 by bit replication
            key = key * 255 // ((1 << depth) - 1)
    return Header("PNG", w, h, keep, _exif_orientation(exif) if keep else 1, key)


def _jpeg(buf: memoryview) -> Header:
    pos = 2
    while True:
        if _int(buf, pos, 1) != 0xFF:
            raise HeaderError(f"JPEG marker expected at byte {pos}; the file is corrupt")
        while _int(buf, pos, 1) == 0xFF:  # fill bytes
            pos += 1
        marker = _int(buf, pos, 1)
        pos += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):
            raise HeaderError("JPEG without a frame header (SOF) before its image data")
        if marker in _JPEG_SOF:
            # height 0 means "defined later by a DNL marker", which libjpeg does not support
            return Header("JPEG", _int(buf, pos + 5, 2), _int(buf, pos + 3, 2))
        length = _int(buf, pos, 2)
        if length < 2:
            raise HeaderError(f"JPEG segment at byte {pos} has an impossible length {length}")
        pos += length


def _bmp(buf: memoryview) -> Header:
    dib = _int(buf, 14, 4, "little")
    if dib == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        return Header("BMP", _int(buf, 18, 2, "little"), _int(buf, 20, 2, "little"))
    if dib < 16:
        raise HeaderError(f"BMP with an unknown {dib}-byte info header")
    # negative height: rows stored top-down
    return Header("BMP", _int(buf, 18, 4, "little", True), abs(_int(buf, 22, 4, "little", True)))


def _gif(buf: memoryview) -> Header:
    w, h, flags = _int(buf, 6, 2, "little"), _int(buf, 8, 2, "little"), _int(buf, 10, 1)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        block = _int(buf, pos, 1)
        if block == 0x2C:  # first image descriptor: the frame may reach past the logical screen
            left, top = _int(buf, pos + 1, 2, "little"), _int(buf, pos + 3, 2, "little")
            fw, fh = _int(buf, pos + 5, 2, "little"), _int(buf, pos + 7, 2, "little")
            return Header("GIF", max(w, left + fw), max(h, top + fh), keep_alpha=True)
        if block != 0x21:
            raise HeaderError("GIF without an image frame")
        pos += 2  # extension introducer and label, then data sub-blocks up to a zero length
        while (size := _int(buf, pos, 1)) != 0:
            pos += size + 1
        pos += 1


def gif_frame_count(buf: memoryview | bytes, stop: int = 2) -> int:
    """How many frames a GIF holds, counting up to ``stop`` (2 tells a still GIF from an animated one).

    Walks the blocks (extensions, image descriptors and their LZW data) without decoding.

    Args:
        buf: the whole GIF file.
        stop: stop counting here.

    Raises:
        HeaderError: not a GIF, or its blocks are cut short.
    """
    buf = memoryview(buf)
    if buf.format != "B" or buf.ndim != 1:
        buf = buf.cast("B")
    if bytes(buf[:6]) not in (b"GIF87a", b"GIF89a"):
        raise HeaderError("not a GIF file")
    flags = _int(buf, 10, 1)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    while frames < stop and pos < len(buf):
        block = _int(buf, pos, 1)
        if block == 0x3B:  # trailer
            break
        if block == 0x2C:
            frames += 1
            local = _int(buf, pos + 9, 1)
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1  # descriptor, table, LZW size
        elif block == 0x21:
            pos += 2
        else:
            raise HeaderError(f"GIF block 0x{block:02x} at byte {pos} is neither an image nor an extension")
        while (size := _int(buf, pos, 1)) != 0:
            pos += size + 1
        pos += 1
    return frames


def _riff_chunks(buf: memoryview, pos: int) -> Iterator[tuple[bytes, int, int]]:
    end = min(len(buf), 8 + _int(buf, 4, 4, "little"))
    while pos + 8 <= end:
        n = _int(buf, pos + 4, 4, "little")
        yield bytes(buf[pos:pos + 4]), pos + 8, n
        pos += 8 + n + (n & 1)


def _webp(buf: memoryview) -> Header:
    kind, data, _ = next(_riff_chunks(buf, 12), (b"", 0, 0))
    if kind == b"VP8 ":
        if bytes(buf[data + 3:data + 6]) != b"\x9d\x01\x2a":
            raise HeaderError("WebP (lossy) without a VP8 start code")
        return Header("WEBP", _int(buf, data + 6, 2, "little") & 0x3FFF, _int(buf, data + 8, 2, "little") & 0x3FFF)
    if kind == b"VP8L":
        bits = _int(buf, data + 1, 4, "little")
        return Header("WEBP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, keep_alpha=bool(bits >> 28 & 1))
    if kind == b"VP8X":
        flags = _int(buf, data, 1)
        w, h = _int(buf, data + 4, 3, "little") + 1, _int(buf, data + 7, 3, "little") + 1
        if not flags & 0x10:
            return Header("WEBP", w, h)
        exif = None
        if flags & 0x08:
            exif = next((bytes(buf[d:d + n]) for k, d, n in _riff_chunks(buf, 12) if k == b"EXIF"), None)
        return Header("WEBP", w, h, True, _exif_orientation(exif))
    raise HeaderError(f"WebP with an unknown first chunk {kind!r}")


def _ifd0(buf: memoryview, base: int = 0) -> dict[int, int]:
    """First value of each tag in the first directory of a TIFF structure starting at ``base``."""
    order = "little" if bytes(buf[base:base + 2]) == b"II" else "big"
    if bytes(buf[base:base + 2]) not in (b"II", b"MM"):
        raise HeaderError("TIFF structure without a byte-order mark")
    big = _int(buf, base + 2, 2, order) == 43  # BigTIFF: 8-byte offsets and counts
    if big:
        pos, count_n, entry, word = base + _int(buf, base + 8, 8, order), 8, 20, 8
    else:
        pos, count_n, entry, word = base + _int(buf, base + 4, 4, order), 2, 12, 4
    tags = {}
    sizes = {1: 1, 3: 2, 4: 4, 6: 1, 8: 2, 9: 4, 16: 8}  # BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG, LONG8
    for i in range(_int(buf, pos, count_n, order)):
        at = pos + count_n + i * entry
        tag, typ = _int(buf, at, 2, order), _int(buf, at + 2, 2, order)
        size = sizes.get(typ)
        if size is None:
            continue
        count = _int(buf, at + 4, word, order)
        value_at = at + 4 + word
        if size * count > word:  # the values live elsewhere; their offset is here
            value_at = base + _int(buf, value_at, word, order)
        tags[tag] = _int(buf, value_at, size, order)
    return tags


def _tiff(buf: memoryview) -> Header:
    tags = _ifd0(buf)
    if 256 not in tags or 257 not in tags:
        raise HeaderError("TIFF whose first directory lacks ImageWidth or ImageLength")
    # alpha (ExtraSamples), 16-bit or floating-point samples of gray or RGB need IMREAD_UNCHANGED.
    # OpenCV applies a TIFF's orientation itself in either mode, and reads 8-bit TIFFs through
    # libtiff's RGBA interface, which premultiplies alpha; deeper ones it reads raw.
    bits, extra = tags.get(258, 8), tags.get(338)
    keep = tags.get(262, 1) in (1, 2) and (extra is not None or bits > 8 or tags.get(339, 1) == 3)
    return Header("TIFF", tags[256], tags[257], keep, premultiplied=extra is not None and (bits <= 8 or extra == 1))


def _exif_orientation(exif: bytes | None) -> int:
    if not exif:
        return 1
    if exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    try:
        value = _ifd0(memoryview(exif)).get(0x0112, 1)
    except HeaderError:
        return 1  # a broken EXIF block does not make the image unreadable
    return value if 1 <= value <= 8 else 1


def _tokens(buf: memoryview, pos: int, n: int) -> tuple[list[bytes], int]:
    """``n`` whitespace-separated tokens from ``pos``, skipping ``#`` comments (PNM headers)."""
    out: list[bytes] = []
    end = min(len(buf), pos + 4096)
    while len(out) < n:
        while pos < end and buf[pos] in b" \t\r\n":
            pos += 1
        if pos < end and buf[pos] == ord("#"):
            while pos < end and buf[pos] not in b"\r\n":
                pos += 1
            continue
        start = pos
        while pos < end and buf[pos] not in b" \t\r\n#":
            pos += 1
        if pos == start:
            raise HeaderError("PNM header cut short")
        out.append(bytes(buf[start:pos]))
    return out, pos


def _number(token: bytes, what: str) -> int:
    if not token.isdigit():
        raise HeaderError(f"{what} header has {token[:20]!r} where a size belongs")
    return int(token)


def _pnm(buf: memoryview) -> Header:
    if bytes(buf[1:2]) == b"7":  # PAM: "WIDTH n" / "HEIGHT n" lines up to ENDHDR
        lines = bytes(buf[3:4096]).split(b"ENDHDR")[0].split(b"\n")
        fields = dict(ln.split(None, 1) for ln in lines if len(ln.split(None, 1)) == 2)
        return Header("PNM", _number(fields.get(b"WIDTH", b"?").strip(), "PAM"),
                      _number(fields.get(b"HEIGHT", b"?").strip(), "PAM"))
    (w, h), _ = _tokens(buf, 2, 2)
    return Header("PNM", _number(w, "PNM"), _number(h, "PNM"))


def _hdr(buf: memoryview) -> Header:
    text = bytes(buf[:65536])
    end = text.find(b"\n\n")
    if end < 0:
        raise HeaderError("Radiance HDR header without its resolution line")
    parts = text[end + 2:].split(b"\n", 1)[0].split()
    if len(parts) != 4 or parts[0][1:2] not in (b"X", b"Y"):
        raise HeaderError(f"Radiance HDR resolution line {b' '.join(parts)[:40]!r} is not '-Y H +X W'")
    first, second = _number(parts[1], "Radiance HDR"), _number(parts[3], "Radiance HDR")
    return Header("HDR", second, first) if parts[0][1:2] == b"Y" else Header("HDR", first, second)


def _boxes(buf: memoryview, pos: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """ISO base media / JP2 boxes in ``[pos, end)`` as ``(type, data start, box end)``."""
    while pos + 8 <= end:
        size, kind, head = _int(buf, pos, 4), bytes(buf[pos + 4:pos + 8]), 8
        if size == 1:
            size, head = _int(buf, pos + 8, 8), 16
        elif size == 0:
            size = end - pos
        if size < head:
            raise HeaderError(f"box {kind!r} has an impossible size {size}")
        yield kind, pos + head, min(pos + size, end)
        pos += size


def _jpeg2000(buf: memoryview) -> Header:
    if bytes(buf[:4]) == b"\xff\x4f\xff\x51":  # raw codestream: SIZ marker segment
        w = _int(buf, 8, 4) - _int(buf, 16, 4)
        return Header("JPEG2000", w, _int(buf, 12, 4) - _int(buf, 20, 4))
    for kind, data, end in _boxes(buf, 0, len(buf)):
        if kind == b"jp2h":
            for sub, sub_data, _ in _boxes(buf, data, end):
                if sub == b"ihdr":
                    return Header("JPEG2000", _int(buf, sub_data + 4, 4), _int(buf, sub_data, 4))
    raise HeaderError("JPEG 2000 file without an image header (jp2h/ihdr) box")


def _avif(buf: memoryview) -> Header:
    kind, data, end = next(_boxes(buf, 0, len(buf)))
    brands = {bytes(buf[i:i + 4]) for i in range(data, end, 4)}
    if not brands & {b"avif", b"avis"}:
        raise HeaderError(f"ISO media file of brand {bytes(buf[data:data + 4])!r}, not an AVIF image")
    largest = None
    for kind, data, end in _boxes(buf, 0, len(buf)):
        if kind != b"meta":
            continue
        for _, props, props_end in (b for b in _boxes(buf, data + 4, end) if b[0] == b"iprp"):
            for _, items, items_end in (b for b in _boxes(buf, props, props_end) if b[0] == b"ipco"):
                for sub, sub_data, _ in _boxes(buf, items, items_end):
                    if sub == b"ispe":  # every item's extent (tiles, alpha, thumbnail): keep the largest
                        w, h = _int(buf, sub_data + 4, 4), _int(buf, sub_data + 8, 4)
                        if largest is None or w * h > largest[0] * largest[1]:
                            largest = (w, h)
        break
    if largest is None:
        raise HeaderError("AVIF file without an image extent (ispe) property")
    return Header("AVIF", *largest)
