"""PNG helpers of the widget tests."""

import io


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes; raises ``ValueError`` for anything that is not a PNG."""
    from PIL import Image

    if not data or data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not PNG bytes")
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size
