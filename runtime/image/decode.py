"""Image arrays and files: validate user arrays, read files, as BGR uint8 (H, W, 3)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from attnmap.runtime.core.errors import ImageError


def check_image(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate a user image array and return it as BGR uint8 ``(H, W, 3)``.

    Accepted: uint8 ``(H, W)`` or ``(H, W, 1)`` gray (made BGR), ``(H, W, 3)`` BGR (returned
    as is, never modified), ``(H, W, 4)`` BGRA (alpha dropped, as PIL's ``convert("RGB")``
    does). Floats are refused rather than guessed at: a float image may hold [0, 1] or
    [0, 255] values, or already be normalised.

    Args:
        img: the array.
        name: how error messages call it.

    Returns:
        ``(H, W, 3)`` uint8 BGR array.

    Raises:
        ImageError: not a non-empty uint8 array of one of those shapes.
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


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 ``(H, W, 3)``.

    Gray images become 3-channel, alpha is dropped, 16-bit images are scaled to 8 bits, and
    the EXIF orientation is applied (all by OpenCV's ``IMREAD_COLOR``). The bytes are read
    with NumPy, so non-ASCII paths work everywhere.

    Args:
        path: the image file.

    Returns:
        ``(H, W, 3)`` uint8 BGR array.

    Raises:
        ImageError: the file is missing, unreadable, or not an image OpenCV decodes.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise ImageError(f"image file {str(path)!r} is a directory; expected an image file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ImageError(f"cannot decode image file {str(path)!r}: not an image format OpenCV reads "
                         "(PNG, JPEG, BMP, TIFF, WebP ...)")
    return img
