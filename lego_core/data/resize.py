"""The size frames are stored and returned at. Apart from video.py so that what only resizes a
picture (generation, an image folder) does not import the video decoder."""

from __future__ import annotations

from PIL import Image


def output_size(width: int, height: int, size: int | None, resize: str) -> tuple[int, int]:
    """The size of a stored frame: short side `size` keeping the aspect, or a `size` square."""
    if not size:
        return width, height
    if resize == "square":
        return size, size
    scale = size / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_image(image: Image.Image, size: int | None, resize: str = "short") -> Image.Image:
    w, h = output_size(image.width, image.height, size, resize)
    return image if (w, h) == image.size else image.resize((w, h), Image.Resampling.BICUBIC)
