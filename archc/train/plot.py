"""The loss curve as a PNG, written without a plotting library.

matplotlib would be a large dependency for one line chart, so this draws the curve itself: an RGB
canvas, axes, the train loss (blue) and the validation loss (orange), the axis ranges labelled in
a 3x5 pixel digit font, encoded with zlib as PNG (one IDAT chunk, filter 0 on every row).
"""

from __future__ import annotations

import struct
import zlib

W, H, MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 640, 360, 48, 16, 16, 28
WHITE, GREY, BLACK, BLUE, ORANGE = (255, 255, 255), (200, 200, 200), (40, 40, 40), (31, 119, 180), (255, 127, 14)

_FONT = {  # 3 x 5 glyphs, rows top to bottom, bits left to right
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7), "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1), "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7),
    ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0), "e": (0, 7, 7, 4, 7),
}


class _Canvas:
    def __init__(self):
        self.px = bytearray(WHITE * (W * H))

    def set(self, x: int, y: int, c) -> None:
        if 0 <= x < W and 0 <= y < H:
            i = 3 * (y * W + x)
            self.px[i:i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c) -> None:  # Bresenham
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.set(x0, y0, c)
            self.set(x0, y0 + 1, c)  # two pixels thick
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def text(self, x: int, y: int, s: str, c=BLACK, scale: int = 2) -> None:
        for ch in s:
            for r, bits in enumerate(_FONT.get(ch, (0,) * 5)):
                for b in range(3):
                    if bits >> (2 - b) & 1:
                        for u in range(scale):
                            for v in range(scale):
                                self.set(x + b * scale + u, y + r * scale + v, c)
            x += 4 * scale

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[3 * W * y: 3 * W * (y + 1)]) for y in range(H))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _fmt(v: float) -> str:
    return f"{v:.3g}".replace("e+0", "e").replace("e-0", "e-")


def loss_png(train: list[tuple[int, float]], val: list[tuple[int, float]]) -> bytes:
    """(step, loss) points of the train and validation curves -> PNG bytes."""
    cv = _Canvas()
    x0, x1, y0, y1 = MARGIN_L, W - MARGIN_R, H - MARGIN_B, MARGIN_T
    cv.line(x0, y0, x1, y0, BLACK)
    cv.line(x0, y0, x0, y1, BLACK)
    points = train + val
    if points:
        smax = max(max(s for s, _ in points), 1)
        lo, hi = min(v for _, v in points), max(v for _, v in points)
        hi = hi if hi > lo else lo + 1.0
        for k in range(1, 4):  # light grid
            gy = y0 + (y1 - y0) * k // 4
            cv.line(x0 + 1, gy, x1, gy, GREY)

        def xy(s: int, v: float) -> tuple[int, int]:
            return x0 + round((x1 - x0) * s / smax), y0 + round((y1 - y0) * (v - lo) / (hi - lo))

        for series, colour in ((train, BLUE), (val, ORANGE)):
            pts = [xy(s, v) for s, v in series]
            for a, b in zip(pts, pts[1:]):
                cv.line(*a, *b, colour)
            for px, py in pts if len(pts) == 1 or colour is ORANGE else ():
                for d in range(-2, 3):
                    cv.line(px - 2, py + d, px + 2, py + d, colour)
        cv.text(2, y1, _fmt(hi))
        cv.text(2, y0 - 10, _fmt(lo))
        label = str(smax)
        cv.text(x1 - 8 * len(label), y0 + 8, label)
        cv.text(x0, y0 + 8, "0")
    return cv.png()
