"""Decoding image files: every kind of file against an independent reference, bombs refused
before decoding, and every kind of bad file reported as an ImageError that names it.

Files are written into tmp_path by Pillow or OpenCV (nothing binary is committed). References
are Pillow's own decoding and conversions (``alpha_composite`` over white, ``exif_transpose``)
or exact arithmetic on the pixels that went in (``round(v * 255 / 65535)`` for 16-bit).
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from extras import need

from attnmap.runtime.core.errors import ImageError, OptionError
from attnmap.runtime.image.decode import (ALPHA_BACKGROUND, DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, decode_image,
                                          max_image_pixels, read_image)
from attnmap.runtime.image.header import read_header

MODEL = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"
H, W = 13, 17  # odd sizes: no format gets an easy power of two


def noise(h: int = H, w: int = W, c: int = 3, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    top = 256 if dtype == np.uint8 else 65536
    img = np.random.default_rng(seed).integers(0, top, (h, w, c), dtype=dtype)
    return np.ascontiguousarray(img[:, :, 0]) if c == 1 else img


def _pil():
    return need("PIL.Image", "test")


def pil_bytes(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pil_bgr(data: bytes, orient: bool = False) -> np.ndarray:
    """Pillow's decoding of ``data``, alpha composited over white the way Pillow does it, as BGR."""
    Image = _pil()
    from PIL import ImageOps
    im = Image.open(io.BytesIO(data))
    if orient:
        im = ImageOps.exif_transpose(im)
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND[::-1] + (255,))
    return np.ascontiguousarray(np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))[:, :, ::-1])


def over_white(bgr: np.ndarray, alpha: np.ndarray, top: float) -> np.ndarray:
    """Exact compositing reference in float64: ``round(bg + (c * 255 / top - bg) * a / top)``."""
    bg = np.array(ALPHA_BACKGROUND, np.float64)
    a = alpha.astype(np.float64)[..., None] / top
    return np.rint(bg + (bgr.astype(np.float64) * 255 / top - bg) * a).astype(np.uint8)


def to8(v: np.ndarray) -> np.ndarray:
    return np.rint(v.astype(np.float64) * 255 / 65535).astype(np.uint8)


def gray3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(w: int, h: int, depth: int = 8, ctype: int = 2, rows: bytes | None = None,
                 extra: bytes = b"") -> bytes:
    """A PNG built by hand (no encoder involved): header chunks, one IDAT, IEND."""
    rows = rows if rows is not None else b"\x00" * 64
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
            + extra + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def handmade_tiff(rgba: np.ndarray, extra_samples: int) -> bytes:
    """An uncompressed 8-bit RGBA TIFF built by hand (Pillow cannot write associated alpha)."""
    h, w, _ = rgba.shape
    pixels = rgba.tobytes()
    bits_at = 8 + 2 + 11 * 12 + 4
    data_at = bits_at + 8
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 4, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, data_at), (277, 3, 1, 4), (278, 3, 1, h), (279, 4, 1, len(pixels)),
               (284, 3, 1, 1), (338, 3, 1, extra_samples)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3 and count == 1
                                                 else struct.pack("<I", value)) for tag, typ, count, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<4H", 8, 8, 8, 8) + pixels


# ----------------------------------------------------------------------------- every kind of file
def _kinds() -> dict:
    """name -> (file suffix, encoded bytes, reference BGR, tolerance in grey levels)."""
    Image = _pil()
    bgr, rgb = noise(), noise()[:, :, ::-1].copy()
    a = noise(c=1, seed=1)
    a[:4] = 0  # fully transparent rows whose RGB is noise: must come out as the background
    a[4:6] = 255
    gray = noise(c=1, seed=2)
    kinds = {}

    def add(name, suffix, data, ref, tol=0):
        kinds[name] = (suffix, data, ref, tol)

    def cv(ext, img):
        ok, enc = cv2.imencode(ext, img)
        assert ok
        return enc.tobytes()

    add("png_rgb", ".png", cv(".png", bgr), bgr)
    add("png_gray", ".png", pil_bytes(Image.fromarray(gray), "PNG"), gray3(gray))
    one = Image.fromarray(gray > 127)
    add("png_1bit", ".png", pil_bytes(one, "PNG"), gray3(np.where(gray > 127, 255, 0).astype(np.uint8)))
    pal = Image.fromarray(rgb).quantize(16)
    add("png_palette", ".png", pil_bytes(pal, "PNG"), pil_bgr(pil_bytes(pal, "PNG")))
    for name, img, kw in (("png_palette_trns", pal, dict(transparency=3)),
                          ("png_gray_trns", Image.fromarray(gray), dict(transparency=int(gray[5, 5]))),
                          ("png_rgb_trns", Image.fromarray(rgb), dict(transparency=tuple(int(v) for v in rgb[5, 5]))),
                          ("png_la", Image.fromarray(np.dstack([gray, a]), "LA"), {})):
        data = pil_bytes(img, "PNG", **kw)
        add(name, ".png", data, pil_bgr(data), 1)
    add("png_rgba", ".png", cv(".png", np.dstack([bgr, a])), over_white(bgr, a, 255))
    g16, c16, a16 = noise(c=1, seed=3, dtype=np.uint16), noise(seed=4, dtype=np.uint16), noise(c=1, seed=5, dtype=np.uint16)
    a16[:3] = 0
    add("png_gray16", ".png", pil_bytes(Image.fromarray(g16), "PNG"), gray3(to8(g16)))
    add("png_rgb16", ".png", cv(".png", c16), to8(c16))
    add("png_rgba16", ".png", cv(".png", np.dstack([c16, a16])), over_white(c16, a16, 65535))
    jpeg = pil_bytes(Image.fromarray(rgb), "JPEG", quality=90)
    add("jpeg_rgb", ".jpg", jpeg, pil_bgr(jpeg), 1)
    data = pil_bytes(Image.fromarray(gray), "JPEG", quality=90)
    add("jpeg_gray", ".jpg", data, pil_bgr(data), 1)
    data = pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    add("jpeg_cmyk", ".jpg", data, pil_bgr(data), 2)
    data = pil_bytes(Image.fromarray(rgb), "JPEG", quality=90, progressive=True)
    add("jpeg_progressive", ".jpg", data, pil_bgr(data), 1)
    add("bmp_rgb", ".bmp", cv(".bmp", bgr), bgr)
    add("bmp_palette", ".bmp", pil_bytes(pal, "BMP"), pil_bgr(pil_bytes(pal, "PNG")))
    add("bmp_gray", ".bmp", pil_bytes(Image.fromarray(gray), "BMP"), gray3(gray))
    add("gif", ".gif", pil_bytes(pal, "GIF"), pil_bgr(pil_bytes(pal, "PNG")))
    data = pil_bytes(pal, "GIF", transparency=3)
    add("gif_trns", ".gif", data, pil_bgr(data), 1)
    frames = [Image.fromarray(noise(seed=10 + i)[:, :, ::-1].copy()).quantize(16) for i in range(3)]
    add("gif_animated", ".gif", pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        pil_bgr(pil_bytes(frames[0], "PNG")))
    add("webp_lossless", ".webp", pil_bytes(Image.fromarray(rgb), "WEBP", lossless=True), bgr)
    data = pil_bytes(Image.fromarray(rgb), "WEBP", quality=90)
    add("webp_lossy", ".webp", data, pil_bgr(data), 2)
    add("webp_rgba", ".webp", pil_bytes(Image.fromarray(np.dstack([rgb, a])), "WEBP", lossless=True, exact=True),
        over_white(bgr, a, 255))
    add("tiff_rgb", ".tif", pil_bytes(Image.fromarray(rgb), "TIFF"), bgr)
    add("tiff_gray", ".tif", pil_bytes(Image.fromarray(gray), "TIFF"), gray3(gray))
    add("tiff_rgba", ".tif", pil_bytes(Image.fromarray(np.dstack([rgb, a])), "TIFF"), over_white(bgr, a, 255))
    add("tiff_lzw", ".tif", pil_bytes(Image.fromarray(rgb), "TIFF", compression="tiff_lzw"), bgr)
    add("tiff_rgb16", ".tif", cv(".tif", c16), to8(c16))
    add("tiff_rgba16", ".tif", cv(".tif", np.dstack([c16, a16])), over_white(c16, a16, 65535))
    # associated (premultiplied) alpha, as compositing programs write it: colour already times alpha
    pm = np.rint(rgb * (a[..., None] / 255.0)).astype(np.uint8)
    data = handmade_tiff(np.dstack([pm, a]), extra_samples=1)
    add("tiff_premultiplied", ".tif", data, np.rint(pm[:, :, ::-1] + 255.0 * (1 - a[..., None] / 255.0)).astype(np.uint8))
    add("ppm", ".ppm", cv(".ppm", bgr), bgr)
    add("pgm", ".pgm", cv(".pgm", gray), gray3(gray))
    add("pam", ".pam", cv(".pam", bgr), bgr)
    add("sun_raster", ".ras", cv(".ras", bgr), bgr)
    return kinds


KIND_NAMES = ["png_rgb", "png_gray", "png_1bit", "png_palette", "png_palette_trns", "png_gray_trns", "png_rgb_trns",
              "png_la", "png_rgba", "png_gray16", "png_rgb16", "png_rgba16", "jpeg_rgb", "jpeg_gray", "jpeg_cmyk",
              "jpeg_progressive", "bmp_rgb", "bmp_palette", "bmp_gray", "gif", "gif_trns", "gif_animated",
              "webp_lossless", "webp_lossy", "webp_rgba", "tiff_rgb", "tiff_gray", "tiff_rgba", "tiff_lzw",
              "tiff_rgb16", "tiff_rgba16", "tiff_premultiplied", "ppm", "pgm", "pam", "sun_raster"]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    out = {}
    for name, (suffix, data, ref, tol) in _kinds().items():
        path = folder / f"{name}{suffix}"
        path.write_bytes(data)
        out[name] = (path, ref, tol)
    assert sorted(out) == sorted(KIND_NAMES)
    return out


@pytest.mark.parametrize("name", KIND_NAMES)
def test_every_kind_decodes_like_the_reference(kinds, name):
    path, ref, tol = kinds[name]
    img = read_image(path)
    assert img.dtype == np.uint8 and img.shape == (H, W, 3) and img.flags.c_contiguous
    diff = np.abs(img.astype(int) - ref.astype(int))
    assert diff.max() <= tol, f"{name}: max diff {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"
    # the same bytes through decode_image, as bytes and as an array
    data = path.read_bytes()
    assert np.array_equal(decode_image(data, name), img)
    assert np.array_equal(decode_image(np.frombuffer(data, np.uint8), name), img)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_header_declares_the_decoded_size(kinds, name):
    """The limit sits exactly at the declared size: one pixel less refuses the file."""
    path, _, _ = kinds[name]
    header = read_header(path.read_bytes())
    assert (header.height, header.width) == (H, W)
    assert read_image(path, max_pixels=H * W).shape == (H, W, 3)
    with pytest.raises(ImageError, match=f"declares {W} x {H} = {H * W:,} pixels, over the limit of {H * W - 1:,}"):
        read_image(path, max_pixels=H * W - 1)


def test_transparent_pixels_show_the_background_not_their_rgb(kinds):
    for name in ("png_rgba", "png_rgba16", "webp_rgba", "tiff_rgba", "tiff_rgba16", "tiff_premultiplied"):
        img = read_image(kinds[name][0])
        rows = 3 if name.endswith("16") else 4
        assert (img[:rows] == ALPHA_BACKGROUND).all(), name
    # and opaque pixels keep their colour exactly
    bgr = noise()
    assert np.array_equal(read_image(kinds["png_rgba"][0])[4:6], bgr[4:6])


def test_large_images_composite_in_bands_like_the_reference(tmp_path):
    """1.08 megapixels: more than one band of the compositing loop."""
    bgr, a = noise(3600, 300, seed=8), noise(3600, 300, c=1, seed=9)
    assert cv2.imwrite(str(tmp_path / "big.png"), np.dstack([bgr, a]))
    assert np.array_equal(read_image(tmp_path / "big.png"), over_white(bgr, a, 255))


def test_sixteen_bit_scaling_is_exact_at_the_ends_and_midpoints(tmp_path):
    """round(v * 255 / 65535): 257 * k maps to k, and the switch between k and k + 1 falls
    halfway, at 257 * k + 128.5."""
    k = np.arange(256, dtype=np.int64)
    row = np.clip(np.stack([257 * k, 257 * k + 128, 257 * k + 129]), 0, 65535).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "g16.png"), row)
    out = read_image(tmp_path / "g16.png")[:, :, 0]
    assert np.array_equal(out[0], k) and np.array_equal(out[1], k)
    assert np.array_equal(out[2, :255], k[:255] + 1)


def _pack(samples: np.ndarray, depth: int) -> bytes:
    """PNG scanlines (filter 0) of integer samples at a bit depth of 1, 2, 4, 8 or 16."""
    rows = []
    for row in samples:
        if depth == 16:
            data = row.astype(">u2").tobytes()
        else:
            bits = np.unpackbits(row.astype(np.uint8)[:, None], axis=1)[:, 8 - depth:]
            data = np.packbits(bits.ravel()).tobytes()
        rows.append(b"\x00" + data)
    return b"".join(rows)


@pytest.mark.parametrize("depth", [1, 2, 4, 8, 16])
def test_png_transparency_keys_at_every_bit_depth(depth):
    """Hand-built PNGs (no encoder involved): gray and RGB with a tRNS colour key. Samples equal
    to the key are transparent (white); the others scale by 255 / (2**depth - 1)."""
    top = (1 << depth) - 1
    rng = np.random.default_rng(depth)
    gray = rng.integers(0, top + 1, (3, 8))
    key = int(gray[0, 0])
    data = handmade_png(8, 3, depth, 0, _pack(gray, depth), png_chunk(b"tRNS", struct.pack(">H", key)))
    out = decode_image(data, f"gray{depth}.png")
    ref = gray3(np.where(gray == key, 255, np.rint(gray * 255 / top)).astype(np.uint8))
    assert np.array_equal(out, ref)
    if depth >= 8:
        rgb = rng.integers(0, top + 1, (3, 8, 3))
        rgb[1, 2] = rgb[0, 0]
        key_rgb = tuple(int(v) for v in rgb[0, 0])
        data = handmade_png(8, 3, depth, 2, _pack(rgb.reshape(3, 24), depth),
                            png_chunk(b"tRNS", struct.pack(">HHH", *key_rgb)))
        out = decode_image(data, f"rgb{depth}.png")
        hit = (rgb == key_rgb).all(axis=2)
        ref = np.where(hit[..., None], 255, np.rint(rgb[..., ::-1] * 255 / top)).astype(np.uint8)
        assert hit.sum() >= 2 and np.array_equal(out, ref)


# ----------------------------------------------------------------------------- orientation
def _exif(orientation: int):
    Image = _pil()
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["jpeg", "png_rgb", "png_rgba", "webp_rgba", "tiff_rgb", "tiff_rgba"])
def test_exif_orientation_is_applied_as_pillow_applies_it(tmp_path, kind, orientation):
    Image = _pil()
    rgb = noise(seed=orientation)[:, :, ::-1].copy()
    alpha = noise(c=1, seed=20)
    alpha[:2] = 0
    fmt = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "tiff": "TIFF"}[kind.split("_")[0]]
    im = Image.fromarray(np.dstack([rgb, alpha]) if kind.endswith("rgba") else rgb)
    extra = dict(lossless=True, exact=True) if fmt == "WEBP" else dict(quality=95) if fmt == "JPEG" else {}
    data = pil_bytes(im, fmt, exif=_exif(orientation), **extra)
    (tmp_path / "o").write_bytes(data)
    img = read_image(tmp_path / "o")
    ref = pil_bgr(data, orient=True)
    assert img.shape == ref.shape == ((W, H, 3) if orientation >= 5 else (H, W, 3))
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= (1 if fmt == "JPEG" else 0)


@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_exif_orientation_of_sixteen_bit_files(tmp_path, orientation):
    """16-bit files take the IMREAD_UNCHANGED path, where OpenCV leaves orientation to us."""
    Image = _pil()
    from PIL import ImageOps
    g16 = noise(c=1, seed=30, dtype=np.uint16)
    for fmt in ("PNG", "TIFF"):  # OpenCV turns TIFFs itself; PNGs are turned in decode.py
        data = pil_bytes(Image.fromarray(g16), fmt, exif=_exif(orientation))
        img = decode_image(data, f"g16.{fmt.lower()}")
        turned = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
        assert turned.dtype == np.uint16 and img.shape == (*turned.shape, 3), fmt
        assert np.array_equal(img, gray3(to8(turned))), fmt


# ----------------------------------------------------------------------------- sizes and slivers
@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 1), (1, 4000), (4000, 1), (7, 7)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM"])
def test_tiny_and_sliver_images_of_every_format(tmp_path, fmt, hw):
    Image = _pil()
    rgb = noise(*hw, seed=hw[0] + hw[1])[:, :, ::-1].copy()
    im = Image.fromarray(rgb)
    if fmt == "GIF":
        im = im.quantize(16)
    data = pil_bytes(im, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    img = decode_image(data, f"tiny.{fmt.lower()}")
    assert img.shape == (*hw, 3)
    ref = pil_bgr(data)
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= (1 if fmt == "JPEG" else 0)


@pytest.mark.parametrize("ext", [".hdr", ".pfm", ".avif", ".jp2"])
def test_other_formats_opencv_reads_keep_working(tmp_path, ext):
    """Formats only OpenCV reads here: the header gives the right size, and the pixels are
    OpenCV's own IMREAD_COLOR decoding, as before the header check existed."""
    img = noise(40, 56)
    ok, enc = cv2.imencode(ext, img.astype(np.float32) / 255 if ext in (".hdr", ".pfm") else img)
    if not ok:
        pytest.skip(f"this OpenCV build cannot write {ext}")
    header = read_header(enc.tobytes())
    assert (header.height, header.width) == (40, 56)
    out = decode_image(enc.tobytes(), f"x{ext}")
    assert np.array_equal(out, cv2.imdecode(enc, cv2.IMREAD_COLOR))


# ----------------------------------------------------------------------------- bombs
def _bombs() -> dict[str, tuple[bytes, int, int]]:
    """name -> (bytes, declared width, declared height): tiny files declaring huge images."""
    bombs = {"png": (handmade_png(60000, 60000), 60000, 60000)}
    _, jpg = cv2.imencode(".jpg", noise(8, 8))
    jpg = bytearray(jpg.tobytes())
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 65000, 64000)
    bombs["jpeg"] = (bytes(jpg), 64000, 65000)
    bmp = bytearray(cv2.imencode(".bmp", noise(8, 8))[1].tobytes())
    bmp[18:26] = struct.pack("<ii", 100000, -90000)
    bombs["bmp"] = (bytes(bmp), 100000, 90000)
    gif = b"GIF89a" + struct.pack("<HHBBB", 100, 100, 0, 0, 0) + b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) \
        + b"\x02\x02\x44\x01\x00\x3b"
    bombs["gif"] = (gif, 65535, 65535)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0, 0, 0, 0]) + (2 ** 24 - 1).to_bytes(3, "little") * 2
    bombs["webp"] = (b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x, 2 ** 24, 2 ** 24)
    entries = [(256, 4, 1, 200000), (257, 4, 1, 150000), (258, 3, 1, 8), (262, 3, 1, 2), (277, 3, 1, 3)]
    tiff = b"II*\x00" + struct.pack("<IH", 8, len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) \
        + struct.pack("<I", 0)
    bombs["tiff"] = (tiff, 200000, 150000)
    return bombs


@pytest.mark.parametrize("kind", sorted(_bombs()))
def test_bombs_are_refused_from_the_header_before_any_decoding(tmp_path, monkeypatch, kind):
    data, w, h = _bombs()[kind]
    assert len(data) < 1000
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(data)

    def no_decoding(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called on a decompression bomb")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(ImageError) as err:
        read_image(path)
    msg = str(err.value)
    assert str(path) in msg and f"{w} x {h} = {w * h:,} pixels" in msg and f"{DEFAULT_MAX_PIXELS:,}" in msg
    assert "\n" not in msg


def test_the_60000_square_png_is_refused_cleanly_even_with_a_high_limit(tmp_path):
    """Allowed by our limit, it reaches OpenCV, whose own cap (2**30 pixels) refuses it: that
    cv2.error is reported as an ImageError too."""
    path = tmp_path / "big.png"
    path.write_bytes(handmade_png(60000, 60000))
    with pytest.raises(ImageError, match="big.png") as err:
        read_image(path, max_pixels=4_000_000_000)
    assert "\n" not in str(err.value)


def test_limit_comes_from_the_argument_then_the_environment_at_call_time(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    assert cv2.imwrite(str(path), noise(10, 11))
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_image_pixels() == DEFAULT_MAX_PIXELS == 100_000_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "109")  # set after import: still honoured
    with pytest.raises(ImageError, match=r"declares 11 x 10 = 110 pixels, over the limit of 109; .*ATTNMAP_MAX_IMAGE"):
        read_image(path)
    assert read_image(path, max_pixels=110).shape == (10, 11, 3)  # the argument wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "110")
    assert read_image(path).shape == (10, 11, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(OptionError, match="ATTNMAP_MAX_IMAGE_PIXELS must be a positive integer.*'lots'"):
        read_image(path)
    for bad in (0, -5, 2.5, True, "100"):
        with pytest.raises(OptionError, match="max_pixels must be a positive integer"):
            read_image(path, max_pixels=bad)


# ----------------------------------------------------------------------------- bad files
def _bad_files() -> dict[str, bytes]:
    good_png = cv2.imencode(".png", noise(64, 64))[1].tobytes()
    good_jpg = cv2.imencode(".jpg", noise(64, 64))[1].tobytes()
    bad = {
        "empty.png": b"",
        "random.jpg": np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "page.png": b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n",
        "doc.png": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        "drawing.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
        "drawing2.png": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
        "zero_width.png": handmade_png(0, 10),
        "zero_height.png": handmade_png(10, 0),
        "zero.gif": b"GIF89a" + bytes(7) + b"\x2c" + bytes(9) + b"\x02\x02\x44\x01\x00\x3b",
        "bad_idat.png": handmade_png(32, 32, rows=b"\xff" * 5),
        "signature_only.png": good_png[:8],
        "header_only.png": good_png[:33],
        "soi_only.jpg": b"\xff\xd8\xff",
        "no_sof.jpg": good_jpg[:2] + b"\xff\xda\x00\x02" + b"\x00" * 100,
        "zero_length_segment.jpg": b"\xff\xd8\xff\xe0\x00\x00" + b"\x00" * 100,
        "float.tif": cv2.imencode(".tif", noise(8, 8).astype(np.float32) / 255)[1].tobytes(),
    }
    for ext in (".png", ".jpg", ".bmp", ".gif", ".webp", ".tif"):
        enc = cv2.imencode(ext, noise(64, 64))[1].tobytes()
        for frac in (0.1, 0.5, 0.9):
            bad[f"truncated{int(frac * 100)}{ext}"] = enc[: int(len(enc) * frac)]
    return bad


@pytest.mark.parametrize("name", sorted(_bad_files()))
def test_bad_files_raise_a_one_line_image_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_bad_files()[name])
    with pytest.raises(ImageError) as err:  # any other exception type fails the test
        read_image(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg and len(msg) < 300, msg
    cause = err.value.__cause__
    assert cause is None or isinstance(cause, (cv2.error, ValueError))


def test_bad_file_messages_say_what_the_file_is(tmp_path):
    cases = {"page.png": "an HTML page", "doc.png": "a PDF document", "drawing.png": "an SVG drawing",
             "empty.png": "empty (0 bytes)", "zero_width.png": "zero or negative size 0 x 10",
             "random.jpg": "not a PNG, JPEG", "float.tif": "float32 samples are not supported"}
    for name, what in cases.items():
        path = tmp_path / name
        path.write_bytes(_bad_files()[name])
        with pytest.raises(ImageError, match=re.escape(what)):
            read_image(path)


def test_opencv_errors_keep_their_cause(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise cv2.error("OpenCV(5.0.0) loadsave.cpp:1: error: (-2:Unspecified error) boom\nmore")

    monkeypatch.setattr(cv2, "imdecode", broken)
    with pytest.raises(ImageError, match=r"cannot decode PNG image file 'x.png': .*boom") as err:
        decode_image(cv2.imencode(".png", noise())[1].tobytes(), "x.png")
    assert isinstance(err.value.__cause__, cv2.error) and "\n" not in str(err.value)


def test_mutated_files_never_raise_anything_but_image_error():
    """Random byte flips and cuts of valid files of every format: either a BGR uint8 image
    or an ImageError, never cv2.error, struct.error, IndexError ..."""
    rng = np.random.default_rng(11)
    sources = [cv2.imencode(ext, noise(24, 20))[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".gif", ".webp",
                                                                         ".tif", ".ppm", ".ras")]
    decoded = refused = 0
    for i in range(400):
        data = bytearray(sources[i % len(sources)])
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, min(len(data), 64 if i % 2 else len(data))))
            data[pos] = int(rng.integers(0, 256))
        if i % 5 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        try:
            img = decode_image(bytes(data), f"mutant{i}", max_pixels=1_000_000)
        except ImageError as exc:
            assert "\n" not in str(exc)
            refused += 1
        else:
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            decoded += 1
    assert decoded > 50 and refused > 50  # both paths were exercised


def test_decode_image_refuses_non_buffers():
    for bad in (None, "x.png", np.zeros((4, 4), np.uint8), np.zeros(4, np.float32)):
        with pytest.raises(ImageError, match="encoded image 'thing' must be bytes or a 1-D uint8 array"):
            decode_image(bad, "thing")


# ----------------------------------------------------------------------------- end to end
def test_shipped_model_explains_every_kind_of_file(kinds):
    from attnmap import Explainer
    ex = Explainer(MODEL, provider="cpu")
    for name in KIND_NAMES:
        path = kinds[name][0]
        img = read_image(path)
        result = ex.explain(path)
        assert np.array_equal(result.image, img), name
        assert result.heatmap.shape == img.shape[:2]
        out = result.overlay()
        assert out.shape == img.shape and out.dtype == np.uint8, name
