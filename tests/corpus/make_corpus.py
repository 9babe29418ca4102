"""A corpus of bad (and some unusual but good) inputs for attnmap, generated, never committed.

Every case is a :class:`Case`: a file name, a function that writes the file, and what attnmap
must make of it:

* ``FAIL``: a typed error (an ``AttnmapError``), one line in the CLI, naming the file;
* ``OK``: a correct result (the overlay has the decoded image's size; lossless images decode
  to known pixels);
* ``EITHER``: truncated files that a decoder may still read in part: a typed failure, or a
  correct (possibly shorter) result. Never a traceback, never a half-written output.

Three families: :func:`image_cases` (under .png .jpg .jpeg .bmp .webp .tif), :func:`video_cases`
(.mp4 .avi) and :func:`onnx_cases` (broken model files, most of them edited copies of the
shipped ``models/shapes_vit.onnx``). Nothing here imports attnmap: the files are made with
NumPy, OpenCV, zlib and onnx alone, so the corpus does not depend on the code it tests.

Usage (writes images/, videos/ and models/ under OUT_DIR, for poking at by hand)::

    python tests/corpus/make_corpus.py OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

FAIL, OK, EITHER = "fail", "ok", "either"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif")
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shapes_vit.onnx"
SAMPLE_HW = (90, 120)  # (h, w) of the real files that are cut and corrupted
VIDEO_FRAMES, VIDEO_WH = 12, (64, 48)


@dataclass(frozen=True)
class Case:
    """One corpus file.

    Attributes:
        name: file name, unique within its family (and so is its stem).
        write: ``write(path)`` creates the file (or folder) at ``path``.
        expect: ``FAIL``, ``OK`` or ``EITHER``.
        size: ``(h, w)`` a successful result must have (images: the decoded image and its
            overlay; videos: the frames).
        pixels: the exact BGR uint8 image a decoder must return (lossless images only).
        where: (h, w) bool: compare ``pixels`` only there (the opaque pixels of an image with
            alpha, whose other pixels depend on how alpha is handled); None: everywhere.
        tolerance: largest allowed per-pixel difference from ``pixels``.
        frames: videos: frames of the uncut original (a result has 1..frames frames).
        needle: ONNX files: a word the error message must contain (case-insensitive).
    """

    name: str
    write: Callable[[Path], None] = field(repr=False, compare=False)
    expect: str
    size: tuple[int, int] | None = None
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)
    where: np.ndarray | None = field(default=None, repr=False, compare=False)
    tolerance: int = 0
    frames: int | None = None
    needle: str | None = None

    def make(self, folder: Path) -> Path:
        """Write this case into ``folder``; return its path."""
        path = Path(folder) / self.name
        self.write(path)
        return path


def write_cases(cases: list[Case], folder: Path) -> dict[str, Path]:
    """Write ``cases`` into ``folder`` (created); return name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {c.name: c.make(folder) for c in cases}


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def noise(seed: int, n: int) -> bytes:
    """``n`` seeded random bytes."""
    return np.random.default_rng(seed).bytes(n)


# ----------------------------------------------------------------------------- images
def sample_image(h: int = SAMPLE_HW[0], w: int = SAMPLE_HW[1], seed: int = 0) -> np.ndarray:
    """A deterministic (h, w, 3) BGR uint8 picture: gradients, a disc and some noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx * 7 + yy * 3) % 256], -1)
    img = img.astype(np.uint8)
    cv2.circle(img, (w // 2, h // 2), max(1, min(h, w) // 3), (30, 220, 250), -1)
    img[::7, ::5] = np.random.default_rng(seed).integers(0, 256, img[::7, ::5].shape, dtype=np.uint8)
    return img


def encode(img: np.ndarray, ext: str, params: tuple = ()) -> bytes:
    """``img`` encoded by OpenCV as ``ext``."""
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV cannot encode {img.dtype} {img.shape} as {ext}")
    return buf.tobytes()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk with its correct CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_file(width: int, height: int, color_type: int, bit_depth: int, rows: bytes = b"", *,
             plte: bytes | None = None, idat: bytes | None = None, ihdr: bytes | None = None) -> bytes:
    """A PNG built by hand (valid CRCs): ``rows`` are the filtered scanlines (filter byte 0 first).

    ``ihdr`` replaces the IHDR payload; ``idat`` the compressed data.
    """
    head = ihdr if ihdr is not None else struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", head)
    if plte is not None:
        out += png_chunk(b"PLTE", plte)
    out += png_chunk(b"IDAT", idat if idat is not None else zlib.compress(rows))
    return out + png_chunk(b"IEND", b"")


def _scanlines(pixels: np.ndarray) -> bytes:
    """(h, w*channels) uint8 -> PNG scanlines with filter type 0."""
    return b"".join(b"\x00" + row.tobytes() for row in pixels)


def jpeg_segments(data: bytes) -> tuple[list[bytes], bytes]:
    """A baseline JPEG split into its header segments (SOI excluded, SOS included) and the rest."""
    i, segs = 2, []
    while True:
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        segs.append(data[i:i + 2 + length])
        if data[i + 1] == 0xDA:
            return segs, data[i + 2 + length:]
        i += 2 + length


def _patch_sof(jpg: bytes, offset: int, value: bytes) -> bytes:
    """``jpg`` with the bytes at ``offset`` into its SOF0 segment (from the marker) replaced."""
    at = jpg.index(b"\xff\xc0") + offset
    return jpg[:at] + value + jpg[at + len(value):]


def exif_jpeg(jpg: bytes, orientation: int) -> bytes:
    """``jpg`` with an EXIF APP1 segment holding only the Orientation tag."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">HHHIHH", 1, 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    app1 = b"Exif\x00\x00" + tiff
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


def cmyk_jpeg(gray: np.ndarray) -> bytes:
    """A 4-component (CMYK, Adobe APP14) baseline JPEG whose four channels all hold ``gray``.

    Made from OpenCV's one-component JPEG of ``gray``: the same tables, an SOF with four
    components, and the one entropy-coded scan repeated once per component (baseline JPEG
    allows one non-interleaved scan per component).
    """
    segs, rest = jpeg_segments(encode(gray, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 95)))
    sof = next(s for s in segs if s[1] == 0xC0)
    precision, h, w, _ = struct.unpack(">BHHB", sof[4:10])
    body = struct.pack(">BHHB", precision, h, w, 4) + b"".join(bytes([k, 0x11, 0]) for k in (1, 2, 3, 4))
    adobe = b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0)  # transform 0: CMYK, not YCCK
    tables = b"".join(s for s in segs if s[1] in (0xDB, 0xC4))
    scans = b"".join(b"\xff\xda\x00\x08" + bytes([1, k, 0x00, 0, 63, 0]) + rest[:-2] for k in (1, 2, 3, 4))
    return (b"\xff\xd8" + b"\xff\xee" + struct.pack(">H", len(adobe) + 2) + adobe + tables
            + b"\xff\xc0" + struct.pack(">H", len(body) + 2) + body + scans + b"\xff\xd9")


def _bmp_dims(bmp: bytes, width: int, height: int) -> bytes:
    """A BMP (BITMAPINFOHEADER) whose header claims ``width`` x ``height``."""
    return bmp[:18] + struct.pack("<ii", width, height) + bmp[26:]


TEXTS = {
    "html": b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
            b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n",
    "pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] "
           b"/Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    "svg": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="120" height="90">'
           b'<circle cx="60" cy="45" r="30" fill="red"/></svg>\n',
}


def image_cases() -> list[Case]:
    """Bad image files of every kind, and unusual good ones (see the module docstring)."""
    img = sample_image()
    real_png, real_jpg = encode(img, ".png"), encode(img, ".jpg")
    cases = [Case(f"zero-byte-{ext[1:]}{ext}", _bytes(b""), FAIL) for ext in IMAGE_EXTS]
    n = len(real_png)
    for cut in (1, 4, 8, 12, 16, 29, 33, 41, 64, n // 4, n // 2, 3 * n // 4, n - 12, n - 1):
        cases.append(Case(f"png-cut-{cut:06d}.png", _bytes(real_png[:cut]), EITHER, SAMPLE_HW))
    n = len(real_jpg)
    for cut in (1, 2, 3, 4, 10, 20, 100, 200, 300, n // 4, n // 2, 3 * n // 4, n - 2, n - 1):
        cases.append(Case(f"jpeg-cut-{cut:06d}.jpg", _bytes(real_jpg[:cut]), EITHER, SAMPLE_HW))
    for seed, size in enumerate((64, 1000, 4096)):
        cases += [Case(f"noise-s{seed}-{ext[1:]}{ext}", _bytes(noise(seed, size)), FAIL) for ext in IMAGE_EXTS]
    magics = {"png": b"\x89PNG\r\n\x1a\n", "jpg": b"\xff\xd8\xff\xe0", "bmp": b"BM",
              "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ", "tif": b"II*\x00"}
    cases += [Case(f"magic-noise-{k}.{k}", _bytes(m + noise(10 + i, 2000)), FAIL) for i, (k, m) in enumerate(magics.items())]
    for kind, ext in (("html", ".png"), ("html", ".jpg"), ("pdf", ".png"), ("pdf", ".jpg"), ("svg", ".png"),
                      ("svg", ".jpg"), ("svg", ".webp"), ("pdf", ".tif"), ("html", ".bmp"), ("svg", ".jpeg")):
        cases.append(Case(f"{kind}-as-{ext[1:]}{ext}", _bytes(TEXTS[kind]), FAIL))
    cases += _corrupt_headers(img, real_png, real_jpg)
    cases += _good_images()
    return cases


def _corrupt_headers(img: np.ndarray, real_png: bytes, real_jpg: bytes) -> list[Case]:
    h, w = img.shape[:2]
    rows = _scanlines(img[:, :, ::-1].reshape(h, -1))
    tiny = zlib.compress(b"\x00" * 64)
    bad_crc = bytearray(real_png)
    bad_crc[16:20] = struct.pack(">I", 2 * w)  # the IHDR width, CRC left as it was
    bmp = encode(img, ".bmp")
    png = {
        "png-ihdr-bad-crc": bytes(bad_crc),
        "png-bit-depth-3": png_file(w, h, 2, 3, rows),
        "png-color-type-5": png_file(w, h, 5, 8, rows),
        "png-compression-1": png_file(w, h, 2, 8, rows, ihdr=struct.pack(">IIBBBBB", w, h, 8, 2, 1, 0, 0)),
        "png-interlace-7": png_file(w, h, 2, 8, rows, ihdr=struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 7)),
        "png-ihdr-short": png_file(w, h, 2, 8, rows, ihdr=struct.pack(">IIB", w, h, 8)),
        "png-no-ihdr": b"\x89PNG\r\n\x1a\n" + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""),
        "png-palette-without-plte": png_file(w, h, 3, 8, _scanlines(np.zeros((h, w), np.uint8))),
        "png-declared-60000x60000": png_file(60000, 60000, 2, 8, idat=tiny),
        "png-declared-100000x100000": png_file(100000, 100000, 2, 8, idat=tiny),
        "png-declared-2147483647x1": png_file(2**31 - 1, 1, 2, 8, idat=tiny),
        "png-declared-1x2147483647": png_file(1, 2**31 - 1, 2, 8, idat=tiny),
        "png-width-0": png_file(0, h, 2, 8, idat=tiny),
        "png-height-0": png_file(w, 0, 2, 8, idat=tiny),
    }
    jpg = {  # offsets into SOF0 from its marker: 4 precision, 5 height, 7 width, 9 components
        "jpeg-sof-height-0": _patch_sof(real_jpg, 5, b"\x00\x00"),
        "jpeg-sof-width-0": _patch_sof(real_jpg, 7, b"\x00\x00"),
        "jpeg-sof-precision-13": _patch_sof(real_jpg, 4, b"\x0d"),
        "jpeg-sof-0-components": _patch_sof(real_jpg, 9, b"\x00"),
        "jpeg-sof-7-components": _patch_sof(real_jpg, 9, b"\x07"),
        "jpeg-sof-length-2": _patch_sof(real_jpg, 2, b"\x00\x02"),
        "jpeg-sof-quant-table-9": _patch_sof(real_jpg, 12, b"\x09"),
        "jpeg-sof-sampling-0": _patch_sof(real_jpg, 11, b"\x00"),
        "jpeg-declared-65535x65535": _patch_sof(real_jpg, 5, b"\xff\xff\xff\xff"),
        "jpeg-no-sof": b"\xff\xd8" + b"".join(s for s in jpeg_segments(real_jpg)[0] if s[1] != 0xC0)
                       + jpeg_segments(real_jpg)[1],
    }
    bad_bmp = {"bmp-width-0": _bmp_dims(bmp, 0, h), "bmp-height-0": _bmp_dims(bmp, w, 0),
               "bmp-declared-60000x60000": _bmp_dims(bmp, 60000, 60000)}
    return ([Case(f"{k}.png", _bytes(v), FAIL) for k, v in png.items()]
            + [Case(f"{k}.jpg", _bytes(v), FAIL) for k, v in jpg.items()]
            + [Case(f"{k}.bmp", _bytes(v), FAIL) for k, v in bad_bmp.items()])


def _good_images() -> list[Case]:
    def lossless(name: str, img: np.ndarray, ext_params: tuple = ()) -> Case:
        data = encode(img, Path(name).suffix, ext_params)
        bgr = img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        where = None if bgr.shape[2] == 3 else bgr[:, :, 3] == 255
        return Case(name, _bytes(data), OK, img.shape[:2], bgr[:, :, :3], where)

    gray = cv2.cvtColor(sample_image(40, 50), cv2.COLOR_BGR2GRAY)
    # alpha: opaque except a ramp over the left third of the columns (0 .. 254)
    ramp = np.full((30, 40), 255, np.uint8)
    ramp[:, :13] = np.linspace(0, 254, 30 * 13).reshape(30, 13).astype(np.uint8)
    rgba = np.dstack([sample_image(30, 40), ramp])
    deep = (sample_image(36, 28).astype(np.uint16) * 257) ^ np.uint16(0x5A)  # low bytes differ from high
    gray_alpha = np.dstack([gray, np.where(gray < 100, gray, 255).astype(np.uint8)])
    index = (np.arange(24 * 32).reshape(24, 32) % 4).astype(np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 240, 10]], np.uint8)  # RGB
    jpg = encode(sample_image(), ".jpg")
    plain = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    cases = [
        lossless("good-1x1.png", sample_image(1, 1)),
        lossless("good-1x500.png", sample_image(1, 500)),
        lossless("good-500x1.png", sample_image(500, 1)),
        lossless("good-gray.png", gray),
        lossless("good-rgba.png", rgba),
        lossless("good-plain-bmp.bmp", sample_image(33, 47)),
        lossless("good-lossless.webp", sample_image(40, 60), (cv2.IMWRITE_WEBP_QUALITY, 101)),
        lossless("good-plain-tif.tif", sample_image(50, 30)),
        Case("good-16bit.png", _bytes(encode(deep, ".png")), OK, deep.shape[:2], (deep >> 8).astype(np.uint8),
             tolerance=1),
        Case("good-16bit-gray.png", _bytes(encode(deep[:, :, 1], ".png")), OK, deep.shape[:2],
             cv2.cvtColor((deep[:, :, 1] >> 8).astype(np.uint8), cv2.COLOR_GRAY2BGR), tolerance=1),
        Case("good-gray-alpha.png", _bytes(png_file(50, 40, 4, 8, _scanlines(gray_alpha.reshape(40, -1)))), OK,
             (40, 50), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), gray_alpha[:, :, 1] == 255),
        Case("good-palette.png", _bytes(png_file(32, 24, 3, 8, _scanlines(index), plte=palette.tobytes())), OK,
             (24, 32), palette[index][:, :, ::-1]),
        Case("good-cmyk.jpg", _bytes(cmyk_jpeg(cv2.cvtColor(sample_image(), cv2.COLOR_BGR2GRAY))), OK, SAMPLE_HW),
        Case("good-plain-jpeg.jpeg", _bytes(jpg), OK, SAMPLE_HW),
        # EXIF orientation 6 (8) shows the 90 x 120 picture turned a quarter clockwise (counter-
        # clockwise): 120 rows, 90 columns; the pixels are the same JPEG's without the tag, turned
        Case("good-exif-rotate-90.jpg", _bytes(exif_jpeg(jpg, 6)), OK, SAMPLE_HW[::-1],
             cv2.rotate(plain, cv2.ROTATE_90_CLOCKWISE), tolerance=2),
        Case("good-exif-rotate-270.jpeg", _bytes(exif_jpeg(jpg, 8)), OK, SAMPLE_HW[::-1],
             cv2.rotate(plain, cv2.ROTATE_90_COUNTERCLOCKWISE), tolerance=2),
    ]
    return cases


# ----------------------------------------------------------------------------- videos
def write_video(path: Path, frames: int = VIDEO_FRAMES, size: tuple[int, int] = VIDEO_WH) -> Path:
    """A real video written with cv2.VideoWriter: mp4v in .mp4, MJPG in .avi; ``size`` is (w, h)."""
    fourcc = "MJPG" if Path(path).suffix.lower() == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} video {path}")
    try:
        for i in range(frames):
            frame = sample_image(size[1], size[0], seed=i)
            cv2.circle(frame, (4 * i + 6, size[1] // 2), 6, (0, 255, 255), -1)
            writer.write(frame)
    finally:
        writer.release()
    return Path(path)


def _cut_video(cut: float) -> Callable[[Path], None]:
    """Write a real video at ``path``, then keep ``cut`` of it: a fraction, bytes, or -bytes from the end."""
    def write(path: Path) -> None:
        data = write_video(path).read_bytes()
        n = int(len(data) * cut) if isinstance(cut, float) else cut if cut > 0 else len(data) + cut
        path.write_bytes(data[:n])
    return write


def video_cases() -> list[Case]:
    """Zero-byte, noise, text, frameless and truncated videos, and good ones (12 frames, 1 frame)."""
    wh = VIDEO_WH[::-1]
    cases = []
    for ext in (".mp4", ".avi"):
        tag = ext[1:]
        cases += [Case(f"video-zero-byte-{tag}{ext}", _bytes(b""), FAIL),
                  Case(f"video-noise-{tag}{ext}", _bytes(noise(20 + len(cases), 30000)), FAIL),
                  Case(f"video-html-as-{tag}{ext}", _bytes(TEXTS["html"]), FAIL),
                  Case(f"video-good-{tag}{ext}", write_video, OK, wh, frames=VIDEO_FRAMES),
                  # a valid container without frames: nothing to explain, so a typed failure
                  Case(f"video-no-frames-{tag}{ext}", lambda p: write_video(p, frames=0), FAIL),
                  Case(f"video-one-frame-{tag}{ext}", lambda p: write_video(p, frames=1), OK, wh, frames=1)]
        for cut in (64, 0.25, 0.5, 0.75, -16):
            label = f"{int(cut * 100)}pct" if isinstance(cut, float) else f"{cut}b"
            cases.append(Case(f"video-cut-{label}-{tag}{ext}", _cut_video(cut), EITHER, wh, frames=VIDEO_FRAMES))
    return cases


# ----------------------------------------------------------------------------- ONNX files
TINY_META = dict(model_name="tiny", input_size=[3, 16, 16], mean=[0.5] * 3, std=[0.5] * 3, interpolation="bilinear",
                 crop_pct=1.0, crop_mode="center", patch_size=[4, 4], grid_size=[4, 4], prefix_tokens=["class"],
                 pooling="token", num_layers=2, num_heads=2, head_fusion="none", num_classes=3,
                 label_names=["a", "b", "c"], outputs=["logits", "attentions"], inputs=["input"], schema_version=1)


def constant_graph(outputs: dict[str, np.ndarray], meta: dict | None = None) -> onnx.ModelProto:
    """A small ONNX model: ``input`` (B, 3, 16, 16) float -> each output = its constant, per image.

    Each output is ``Mul(Reshape(ReduceMean(input)), 0) + value`` (shape (B, *value.shape)), so the
    batch axis is real. ``meta`` is stored as the attnmap metadata JSON.
    """
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=1)]
    inits = []
    for name, value in outputs.items():
        shape = [-1] + [1] * value.ndim
        inits += [helper.make_tensor(f"{name}_shape", TensorProto.INT64, [len(shape)], shape),
                  helper.make_tensor(f"{name}_value", TensorProto.FLOAT, [1, *value.shape],
                                     value.astype(np.float32).ravel().tolist()),
                  helper.make_tensor(f"{name}_zero", TensorProto.FLOAT, [], [0.0])]
        nodes += [helper.make_node("Reshape", ["m", f"{name}_shape"], [f"{name}_r"]),
                  helper.make_node("Mul", [f"{name}_r", f"{name}_zero"], [f"{name}_z"]),
                  helper.make_node("Add", [f"{name}_z", f"{name}_value"], [name])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])]
    declared = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *v.shape]) for n, v in outputs.items()]
    model = helper.make_model(helper.make_graph(nodes, "corpus", inputs, declared, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta is not None:
        model.metadata_props.add(key="attnmap", value=json.dumps(meta))
    return model


def _shipped_with(edit: Callable[[onnx.ModelProto], None]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        model = onnx.load(str(SHIPPED))
        edit(model)
        onnx.save(model, str(path))
    return write


def _set_meta(value: str | None, key: str = "attnmap") -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        del model.metadata_props[:]
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    return edit


def _meta_changes(**changes) -> Callable[[onnx.ModelProto], None]:
    """Edit the shipped metadata JSON; a value of ``...`` removes the field."""
    def edit(model: onnx.ModelProto) -> None:
        data = json.loads({p.key: p.value for p in model.metadata_props}["attnmap"])
        for k, v in changes.items():
            data.pop(k) if v is ... else data.__setitem__(k, v)
        _set_meta(json.dumps(data))(model)
    return edit


def _drop_output(name: str) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        kept = [o for o in model.graph.output if o.name != name]
        del model.graph.output[:]
        model.graph.output.extend(kept)
    return edit


def onnx_cases() -> list[Case]:
    """Broken model files: not ONNX, truncated, foreign graphs, tampered attnmap metadata."""
    data = SHIPPED.read_bytes()
    n = len(data)
    meta = json.loads({p.key: p.value for p in onnx.load(str(SHIPPED)).metadata_props}["attnmap"])
    cases = [Case("onnx-zero-byte.onnx", _bytes(b""), FAIL, needle="onnx"),
             Case("onnx-noise-small.onnx", _bytes(noise(30, 512)), FAIL, needle="onnx"),
             Case("onnx-noise-large.onnx", _bytes(noise(31, 65536)), FAIL, needle="onnx"),
             Case("onnx-text.onnx", _bytes(b"this is not a model\n" * 20), FAIL, needle="onnx"),
             Case("onnx-html.onnx", _bytes(TEXTS["html"]), FAIL, needle="onnx"),
             Case("onnx-json.onnx", _bytes(b'{"attnmap": {"schema_version": 1}}'), FAIL, needle="onnx"),
             Case("onnx-directory.onnx", lambda p: p.mkdir(), FAIL)]
    for cut in (1, 16, 1024, n // 10, n // 2, 9 * n // 10, n - 1):
        cases.append(Case(f"onnx-cut-{cut:08d}.onnx", _bytes(data[:cut]), FAIL))
    foreign = {"logits": np.zeros(7)}
    cases += [
        Case("onnx-foreign-no-attentions.onnx", lambda p: onnx.save(constant_graph(foreign), str(p)), FAIL,
             needle="attnmap"),
        Case("onnx-foreign-claims-attentions.onnx",
             lambda p: onnx.save(constant_graph({"logits": np.zeros(3)}, TINY_META), str(p)), FAIL,
             needle="attentions"),
        Case("onnx-shipped-attentions-dropped.onnx", _shipped_with(_drop_output("attentions")), FAIL,
             needle="attentions"),
    ]
    tampered = {
        "meta-key-removed": (_set_meta(None), "attnmap"),
        "meta-other-key-only": (_set_meta(json.dumps(meta), key="config"), "attnmap"),
        "meta-not-json": (_set_meta("{schema_version: 1,"), "json"),
        "meta-empty-string": (_set_meta(""), "json"),
        "meta-json-list": (_set_meta(json.dumps([meta])), "object"),
        "meta-json-string": (_set_meta(json.dumps(json.dumps(meta))), "object"),
        "meta-schema-999": (_meta_changes(schema_version=999), "schema_version"),
        "meta-schema-as-string": (_meta_changes(schema_version="1"), "schema_version"),
        "meta-schema-missing": (_meta_changes(schema_version=...), "schema_version"),
        "meta-grid-5x5": (_meta_changes(grid_size=[5, 5]), "grid"),
        "meta-grid-12x13": (_meta_changes(grid_size=[12, 13]), "grid"),
        "meta-classes-5-labels-7": (_meta_changes(num_classes=5), "label"),
        "meta-classes-7-labels-6": (_meta_changes(label_names=meta["label_names"][:6]), "label"),
        "meta-classes-6-graph-7": (_meta_changes(num_classes=6, label_names=meta["label_names"][:6]), "classes"),
        "meta-layers-3": (_meta_changes(num_layers=3), "layers"),
        "meta-heads-2": (_meta_changes(num_heads=2), "heads"),
        "meta-input-64": (_meta_changes(input_size=[3, 64, 64]), "input"),
        "meta-mean-missing": (_meta_changes(mean=...), "mean"),
        "meta-unknown-field": (_meta_changes(colour="blue"), "colour"),
        "meta-crop-pct-nan": (_meta_changes(crop_pct=float("nan")), "crop_pct"),
        "meta-patch-size-negative": (_meta_changes(patch_size=[-8, 8]), "patch_size"),
    }
    cases += [Case(f"{k}.onnx", _shipped_with(edit), FAIL, needle=needle) for k, (edit, needle) in tampered.items()]
    return cases


def write_all(out: Path) -> dict[str, int]:
    """The whole corpus under ``out``: images/, videos/, models/; returns the count per folder."""
    out = Path(out)
    counts = {}
    for folder, cases in (("images", image_cases()), ("videos", video_cases()), ("models", onnx_cases())):
        counts[folder] = len(write_cases(cases, out / folder))
    return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write attnmap's bad-input corpus to a folder.")
    parser.add_argument("out", type=Path, help="folder to write images/, videos/ and models/ into")
    counts = write_all(parser.parse_args().out)
    print(", ".join(f"{n} {k}" for k, n in counts.items()))
