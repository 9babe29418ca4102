"""Image arrays and files: validate user arrays, decode files, as BGR uint8 (H, W, 3).

Decoding is OpenCV's, behind a header check (:mod:`attnmap.runtime.image.header`): the declared
width x height is read from the header alone and checked against a pixel limit before any
decoder allocates memory, so a decompression bomb (a few hundred bytes that declare
60000 x 60000 pixels) is refused cheaply. Files OpenCV's ``IMREAD_COLOR`` reads as intended
(opaque 8-bit images, JPEG of any colour space) are decoded by it directly; files with alpha,
a transparent colour or 16-bit samples are decoded ``IMREAD_UNCHANGED`` and finished here:

* 16-bit samples are scaled to 8 bits exactly, ``round(v * 255 / 65535)``.
* Alpha (RGBA, gray + alpha, a PNG palette or colour with transparency, a GIF's transparent
  index) is composited over :data:`ALPHA_BACKGROUND` (white, as image viewers and web pages
  show such files), so the RGB values that fully transparent pixels happen to hold never show.
* The EXIF orientation is applied (``IMREAD_COLOR`` does that itself).

BMP alpha is dropped (32-bit BMPs mostly hold an unused fourth byte), as is alpha in JPEG 2000
and AVIF files; floating-point TIFFs are refused. Arrays given to :func:`check_image` keep their
contract: a 4th channel is dropped, not composited, because an array's alpha is often unset (0)
in captured frames. Checked against OpenCV 5.0 (tests/test_decode.py pins each behaviour used:
GIF decoding needs OpenCV 4.11 or later, TIFF orientation is applied by OpenCV itself).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np

from attnmap.runtime.core.errors import ImageError, OptionError
from attnmap.runtime.image.header import Header, HeaderError, read_header

DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "ATTNMAP_MAX_IMAGE_PIXELS"
ALPHA_BACKGROUND = (255, 255, 255)  # BGR under transparent pixels


def check_image(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate a user image array and return it as BGR uint8 ``(H, W, 3)``.

    Accepted: uint8 ``(H, W)`` or ``(H, W, 1)`` gray (made BGR), ``(H, W, 3)`` BGR (returned
    as is when C-contiguous, never modified), ``(H, W, 4)`` BGRA (alpha dropped, as PIL's
    ``convert("RGB")`` does). Floats are refused rather than guessed at: a float image may hold
    [0, 1] or [0, 255] values, or already be normalised.

    Args:
        img: the array.
        name: how error messages call it.

    Returns:
        ``(H, W, 3)`` uint8 BGR array.

    Raises:
        ImageError: not a non-empty uint8 array of one of those shapes (None and other
            non-arrays included).
    """
    if not isinstance(img, np.ndarray):
        raise ImageError(f"{name} must be a BGR uint8 numpy array (H, W, 3); got {type(img).__name__}")
    shape_ok = img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3, 4))
    if img.dtype != np.uint8 or not shape_ok:
        hint = ""
        if np.issubdtype(img.dtype, np.floating):
            hint = "; for values in [0, 1] use (img * 255).round().astype(np.uint8)"
        elif img.dtype == np.uint16:
            hint = "; for 16-bit images use (img >> 8).astype(np.uint8)"
        raise ImageError(f"{name} must be a BGR uint8 array (H, W, 3); got {img.dtype} {img.shape}{hint}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(f"{name} is empty; got shape {img.shape}")
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(np.ascontiguousarray(img.reshape(img.shape[:2])), cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img)


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels``, else ``$ATTNMAP_MAX_IMAGE_PIXELS`` (read now,
    not at import), else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        OptionError: the argument or the variable is not a positive integer.
    """
    source, value = "max_pixels", max_pixels
    if value is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        source = f"${MAX_PIXELS_ENV}"
        try:
            value = int(raw)
        except ValueError:
            raise OptionError(f"{source} must be a positive integer pixel count; got {raw!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise OptionError(f"{source} must be a positive integer pixel count; got {value!r}")
    return int(value)


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, name: str, *,
                 max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file's bytes as BGR uint8 ``(H, W, 3)``.

    Args:
        data: the encoded file: bytes, or a 1-D uint8 array (as ``np.fromfile`` gives).
        name: names the image in error messages (a path, a URL, an upload's name).
        max_pixels: refuse images whose header declares more pixels than this; None means
            ``$ATTNMAP_MAX_IMAGE_PIXELS`` or :data:`DEFAULT_MAX_PIXELS` (100 megapixels).
            OpenCV keeps its own cap (``OPENCV_IO_MAX_IMAGE_PIXELS``, 2**30 by default).

    Returns:
        ``(H, W, 3)`` uint8 BGR array (see the module docstring for alpha, 16-bit and EXIF).

    Raises:
        ImageError: empty data, not an image format OpenCV reads here (say an HTML page or PDF
            renamed ``.png``), a header that declares a zero size or more than ``max_pixels``
            pixels, or a truncated or corrupt file. The message is one line and names ``name``.
        OptionError: a bad ``max_pixels`` or ``$ATTNMAP_MAX_IMAGE_PIXELS``.
    """
    limit = max_image_pixels(max_pixels)
    buf = _as_buffer(data, name)
    if buf.size == 0:
        raise ImageError(f"cannot decode image file {name!r}: it is empty (0 bytes)")
    try:
        header = read_header(memoryview(buf))
    except HeaderError as exc:
        raise ImageError(f"cannot decode image file {name!r}: {exc}") from exc
    if header.pixels > limit:
        raise ImageError(f"refusing to decode image file {name!r}: its {header.format} header declares "
                         f"{header.width} x {header.height} = {header.pixels:,} pixels, over the limit of "
                         f"{limit:,}; pass max_pixels= or set ${MAX_PIXELS_ENV} to allow larger images")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED if header.keep_alpha else cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageError(f"cannot decode {header.format} image file {name!r}: {_cv_reason(exc)}") from exc
    if img is None or img.size == 0:
        raise ImageError(f"cannot decode {header.format} image file {name!r}: OpenCV could not read it "
                         "(truncated or corrupt)")
    if header.keep_alpha:
        img = _finish(img, header, name)
    return img


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as BGR uint8 ``(H, W, 3)``.

    The bytes are read with NumPy, so non-ASCII paths work everywhere, and decoded by
    :func:`decode_image` (header check first, then one decode).

    Args:
        path: the image file.
        max_pixels: pixel limit; see :func:`decode_image`.

    Returns:
        ``(H, W, 3)`` uint8 BGR array.

    Raises:
        ImageError: the file is missing, unreadable, too large, or not an image OpenCV decodes.
        OptionError: a bad ``max_pixels`` or ``$ATTNMAP_MAX_IMAGE_PIXELS``.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise ImageError(f"image file {str(path)!r} is a directory; expected an image file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from exc
    return decode_image(data, str(path), max_pixels=max_pixels)


def _cv_reason(exc: cv2.error) -> str:
    """The message of a ``cv2.error`` on one line, without OpenCV's source location. (Not its
    ``err`` attribute: OpenCV sets that on the class, so it can belong to an earlier error.)"""
    text = str(exc).strip()
    found = re.search(r"error: (\([^)]*\) .*?)(?: in function '[^']*')?$", text, re.DOTALL)
    return "OpenCV error " + " ".join((found.group(1) if found else text).split())


def _as_buffer(data, name: str) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1:
        return np.ascontiguousarray(data)
    got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
    raise ImageError(f"encoded image {name!r} must be bytes or a 1-D uint8 array; got {got}")


def _finish(img: np.ndarray, header: Header, name: str) -> np.ndarray:
    """An ``IMREAD_UNCHANGED`` decode (gray, gray + alpha, BGR or BGRA; uint8 or uint16) -> BGR uint8."""
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"cannot decode {header.format} image file {name!r}: {img.dtype} samples are not "
                         "supported; save it with 8- or 16-bit samples")
    top = 255 if img.dtype == np.uint8 else 65535
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    colour = img[:, :, :3] if channels >= 3 else img[:, :, :1]
    alpha = img[:, :, 3] if channels == 4 else img[:, :, 1] if channels == 2 else None
    if alpha is None and header.gray_key is not None:
        alpha = np.where(img[:, :, 0] == header.gray_key, 0, top).astype(img.dtype)
    if alpha is not None:
        out = _over_background(colour, alpha, top, header.premultiplied)
    elif img.dtype == np.uint8:
        out = colour
    else:  # round(v * 255 / 65535): no ties (257 is odd), far from float32 rounding trouble
        out = cv2.convertScaleAbs(colour, alpha=255.0 / 65535.0)
    if out.ndim == 2 or out.shape[2] == 1:
        out = cv2.cvtColor(np.ascontiguousarray(out.reshape(out.shape[:2])), cv2.COLOR_GRAY2BGR)
    return _orient(np.ascontiguousarray(out), header.orientation)


def _over_background(colour: np.ndarray, alpha: np.ndarray, top: int, premultiplied: bool) -> np.ndarray:
    """``(H, W, 1 or 3)`` colour and ``(H, W)`` alpha, both in [0, top], over
    :data:`ALPHA_BACKGROUND` -> ``(H, W, 3)`` uint8: ``bg + (c - bg) * a``, or ``c + bg * (1 - a)``
    for premultiplied colour. float32 is exact here (a result is never within 1e-5 of a .5 tie),
    and bands of about a megapixel keep the temporaries small."""
    h, w = alpha.shape
    out = np.empty((h, w, 3), np.uint8)
    bg = np.array(ALPHA_BACKGROUND, np.float32)
    rows = max(1, (1 << 20) // w)
    for y in range(0, h, rows):
        c = colour[y:y + rows].astype(np.float32) * np.float32(255 / top)
        a = alpha[y:y + rows, :, None].astype(np.float32) * np.float32(1 / top)
        mixed = c + bg * (1 - a) if premultiplied else bg + (c - bg) * a
        # premultiplied colour above its alpha (a broken file) would pass 255
        out[y:y + rows] = np.clip(np.rint(mixed), 0, 255)
    return out


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) the way viewers (and Pillow's ``exif_transpose``) do."""
    if not 2 <= orientation <= 8:
        return img
    turned = {2: lambda m: m[:, ::-1], 3: lambda m: m[::-1, ::-1], 4: lambda m: m[::-1],
              5: lambda m: m.swapaxes(0, 1), 6: lambda m: m[::-1].swapaxes(0, 1),
              7: lambda m: m[::-1, ::-1].swapaxes(0, 1), 8: lambda m: m[:, ::-1].swapaxes(0, 1)}[orientation](img)
    return np.ascontiguousarray(turned)
