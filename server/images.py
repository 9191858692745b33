"""Robust decoding of uploaded images into RGB arrays, and PNG encoding of results. No torch.

Policy (cases B16, B20, B21, B23, B37):

* Only bytes come in (never an ``UploadFile``), so nothing unpicklable crosses to the worker.
* The pixel count is read from the header **before** any pixel is decoded; above ``max_pixels`` (set below PIL's
  89.5 MP default) the upload is refused with :class:`ImageTooLarge` (HTTP 413) and no memory is spent.
* Not an image, empty, or truncated → :class:`InvalidImage` (HTTP 400 ``invalid image``). Truncated files are
  refused, never half-decoded with grey padding: a silent partial image would be a wrong answer.
* Every PIL mode is normalised to 8-bit RGB: EXIF orientation applied; 16-bit and 32-bit integer/float greyscale
  scaled by their real range; CMYK and YCbCr converted; palette images with ``tRNS`` and every mode with alpha
  (LA, RGBA, PA, La, RGBa) composited on a fixed mid-grey background (128, 128, 128), so transparency never becomes
  a fourth channel that could be mistaken for a latent (B16).
* Any size and aspect is accepted: :func:`to_model_resolution` resizes the short side to the model resolution
  (bicubic) and centre-crops, the ADM/DiT ImageNet preprocessing; the feature shape is then fixed (B37).
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

BACKGROUND_RGB = (128, 128, 128)  # fixed compositing background for transparent pixels (mid grey)


class InvalidImage(ValueError):
    """The bytes are not a decodable image (non-image, empty, truncated, unsupported)."""


class ImageTooLarge(ValueError):
    """The header declares more pixels than allowed (decompression-bomb guard)."""


def decode_image(data: bytes, *, max_pixels: int, field: str = "image",
                 background: tuple[int, int, int] = BACKGROUND_RGB) -> np.ndarray:
    """Decode uploaded bytes to an RGB image.

    Args:
        data: the raw file bytes.
        max_pixels: refuse images whose header declares more than this many pixels.
        field: the request field name, quoted in errors.
        background: RGB that transparent pixels are composited onto (mid grey for images; black for masks).

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        InvalidImage: empty, not an image, truncated or undecodable.
        ImageTooLarge: width × height above ``max_pixels``.
    """
    if not data:
        raise InvalidImage(f"{field}: invalid image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # lazy: reads the header only
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLarge(f"{field}: {w}x{h} = {w * h} pixels exceeds max_upload_pixels={max_pixels}")
            if w < 1 or h < 1:
                raise InvalidImage(f"{field}: invalid image size {w}x{h}")
            img.load()  # full decode; raises OSError on truncated data
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img, background)
    except (ImageTooLarge, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL refused the header before we could read the size (above its own bomb limit, far above ours): quote
        # our limit, with the pixel count PIL reports when it gives one.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1))} pixels" if found else "more pixels than allowed"
        raise ImageTooLarge(f"{field}: the header declares {declared}, which exceeds "
                            f"max_upload_pixels={max_pixels}") from None
    except UnidentifiedImageError:
        raise InvalidImage(f"{field}: invalid image (not a recognised image format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise InvalidImage(f"{field}: invalid image ({exc})") from None


def _to_rgb(img: Image.Image, background: tuple[int, int, int] = BACKGROUND_RGB) -> np.ndarray:
    """Normalise any PIL mode to (H, W, 3) uint8 (see the module docstring)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if mode.startswith("I;16") else (float(np.nanmin(arr)), float(np.nanmax(arr)))
        if mode == "I" and arr.min() >= 0 and arr.max() <= 65535:
            lo, hi = 0.0, 65535.0 if arr.max() > 255 else 255.0
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr = np.nan_to_num((arr - lo) * scale, nan=0.0).clip(0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    elif mode in ("La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode in ("LA", "RGBA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        img = Image.alpha_composite(bg, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def to_model_resolution(rgb: np.ndarray, size: int,
                        resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop to ``size × size`` (the image's transform; masks use the
    same geometry with another ``resample`` filter).

    Args:
        rgb: ``(H, W, 3)`` or ``(H, W)`` uint8. size: model resolution in pixels. resample: PIL filter (bicubic for
            images).

    Returns:
        ``(size, size, 3)`` (or ``(size, size)``) uint8.
    """
    img = Image.fromarray(rgb)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def same_aspect(mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> bool:
    """True when a ``mask_hw`` mask scaled to the image's width has the image's height to within one pixel (and
    the other way round), i.e. the two differ only by resolution."""
    (mh, mw), (h, w) = mask_hw, image_hw
    return abs(mh * w / mw - h) <= 1.0 and abs(mw * h / mh - w) <= 1.0


def selected_pixels(rgb: np.ndarray) -> np.ndarray:
    """The selection rule of a mask image: a pixel is selected when any channel is non-zero (after transparent
    pixels were composited onto black). So {0, 1}, {0, 255} and grey masks all mean "non-zero = selected".

    Returns:
        ``(H, W)`` uint8, 255 where selected, else 0.
    """
    return np.where(rgb.max(axis=2) > 0, 255, 0).astype(np.uint8)


def decode_mask(data: bytes, *, max_pixels: int, size: int, image_hw: tuple[int, int]) -> np.ndarray:
    """Decode a mask image to a ``(size, size)`` float32 {0, 1} mask at model resolution (1 = selected).

    Rule: any non-zero pixel is selected (:func:`selected_pixels`); transparent pixels count as black, so a fully
    transparent mask selects nothing. The mask may have another resolution than the image but must have its aspect
    ratio (:func:`same_aspect`): it is resized to the image's size and then goes through the image's own
    resize-and-crop geometry (:func:`to_model_resolution`, bilinear); a model pixel is selected when at least half
    of it is covered by selected mask pixels.

    Args:
        data: the uploaded bytes. max_pixels: decompression-bomb limit. size: model resolution in pixels.
        image_hw: ``(H, W)`` of the decoded input image (after EXIF orientation).

    Raises:
        InvalidImage / ImageTooLarge: as :func:`decode_image`. MaskSizeMismatch: another aspect ratio.
    """
    rgb = decode_image(data, max_pixels=max_pixels, field="mask", background=(0, 0, 0))
    if not same_aspect(rgb.shape[:2], image_hw):
        h, w = image_hw
        raise MaskSizeMismatch(f"the mask is {rgb.shape[1]}x{rgb.shape[0]} but the image is {w}x{h}: another "
                               f"aspect ratio; send a mask of the image's aspect ratio, e.g. {w}x{h} (or a box)")
    mask = selected_pixels(rgb)
    if mask.shape != tuple(image_hw):  # same aspect, another resolution: first to the image's own size
        mask = np.asarray(Image.fromarray(mask).resize((image_hw[1], image_hw[0]), Image.Resampling.BILINEAR))
    return _at_model_resolution(mask, size)


def _at_model_resolution(mask: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` uint8 {0, 255} mask -> ``(size, size)`` float32 {0, 1}: the image's geometry, then >= half
    covered = selected."""
    return (to_model_resolution(mask, size, Image.Resampling.BILINEAR) >= 128).astype(np.float32)


class MaskSizeMismatch(ValueError):
    """The mask image's aspect ratio differs from the input image's (``POST /edit`` answers 422 naming both)."""


def box_mask(box: list[int], image_hw: tuple[int, int], size: int) -> np.ndarray:
    """A rectangular mask ``[x0, y0, x1, y1]`` in input pixels, mapped through the same geometry as a mask image.

    Returns:
        ``(size, size)`` float32 {0, 1} (1 = selected), as :func:`decode_mask`.

    Raises:
        ValueError: an empty or inverted box, or one entirely outside the image, naming the image size and the
            allowed range (the caller's 422 adds the value).
    """
    h, w = image_hw
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise ValueError(f"need 0 <= x0 < x1 and 0 <= y0 < y1 (image is {w}x{h})")
    if x0 >= w or y0 >= h:
        raise ValueError(f"lies entirely outside the {w}x{h} image; need x0 < {w} and y0 < {h}")
    canvas = np.zeros((h, w), dtype=np.uint8)
    canvas[min(y0, h):min(y1, h), min(x0, w):min(x1, w)] = 255
    return _at_model_resolution(canvas, size)


def encode_png(rgb: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
