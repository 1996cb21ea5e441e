"""A PNG of the latency-vs-throughput plot without matplotlib: lines and points drawn into a
pixel buffer by hand and written with zlib. It carries no text (the HTML page beside it has the
axes, labels and table); it is there so that a report always has an image to paste."""
from __future__ import annotations

import struct
import zlib
from typing import Callable, Sequence

Colour = tuple[int, int, int]


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: float, y: float, colour: Colour, radius: int = 1) -> None:
        cx, cy = int(round(x)), int(round(y))
        for yy in range(cy - radius, cy + radius + 1):
            for xx in range(cx - radius, cx + radius + 1):
                if 0 <= xx < self.width and 0 <= yy < self.height:
                    i = (yy * self.width + xx) * 3
                    self.pixels[i:i + 3] = bytes(colour)

    def line(self, a: tuple[float, float], b: tuple[float, float], colour: Colour, *, width: int = 1,
             dash: int = 0) -> None:
        (x0, y0), (x1, y1) = a, b
        steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0))))
        for i in range(steps + 1):
            if dash and (i // dash) % 2:
                continue
            t = i / steps
            self.dot(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, colour, width // 2)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.pixels[y * self.width * 3:(y + 1) * self.width * 3])
                       for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        signature = b"\x89PNG\r\n\x1a\n"
        return signature + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _rgb(hex_colour: str) -> Colour:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


def draw(path: str, size: tuple[int, int], frame: tuple[float, float, float, float],
         grid: tuple[Sequence[float], Sequence[float]], px: Callable[[float], float], py: Callable[[float], float],
         series: Sequence[tuple[str, Sequence[tuple[float, float, float, str]], str]]) -> str:
    """`series`: (name, points, colour); points as in plot.Series. Returns `path`."""
    canvas = Canvas(*size)
    left, top, right, bottom = frame
    for x in grid[0]:
        canvas.line((px(x), top), (px(x), bottom), (235, 235, 235))
    for y in grid[1]:
        canvas.line((left, py(y)), (right, py(y)), (235, 235, 235))
    for a, b in (((left, top), (right, top)), ((right, top), (right, bottom)), ((right, bottom), (left, bottom)),
                 ((left, bottom), (left, top))):
        canvas.line(a, b, (51, 51, 51))
    for _, pts, colour in series:
        rgb = _rgb(colour)
        for idx, dash in ((1, 0), (2, 5)):
            for p, q in zip(pts, pts[1:]):
                canvas.line((px(p[0]), py(float(p[idx]))), (px(q[0]), py(float(q[idx]))), rgb, width=2, dash=dash)
        for p in pts:
            canvas.dot(px(p[0]), py(p[1]), rgb, 3)
    with open(path, "wb") as fh:
        fh.write(canvas.png())
    return path


__all__ = ["Canvas", "draw"]
