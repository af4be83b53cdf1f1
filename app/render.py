"""The graphic codes of C7, rendered in memory: QR codes (segno) and Code 128 barcodes."""

from __future__ import annotations

import io

import segno
from barcode import Code128
from barcode.charsets import code128
from barcode.writer import SVGWriter

MIN_SCALE = 1
MAX_SCALE = 40
DEFAULT_SCALE = 8


def _qr(content: str) -> segno.QRCode:
    # Always a full QR code (never Micro QR, which phone cameras do not read), with error
    # correction M so a printed code survives some wear.
    return segno.make_qr(content, error="m")


def qr_svg(content: str, scale: int = DEFAULT_SCALE) -> bytes:
    buffer = io.BytesIO()
    _qr(content).save(buffer, kind="svg", scale=scale, border=4)
    return buffer.getvalue()


def qr_png(content: str, scale: int = DEFAULT_SCALE) -> bytes:
    buffer = io.BytesIO()
    _qr(content).save(buffer, kind="png", scale=scale, border=4)
    return buffer.getvalue()


class _Code128SetB(Code128):
    """Code 128 in code set B alone. python-barcode's own encoder opens in set C for a leading
    digit pair and then mistakes the pair "99" for the CODE C symbol (both are value 99),
    dropping those digits from the symbol. Every short code character is in set B, and a
    12-character symbol gains nothing from set C."""

    def _build(self) -> list[int]:
        return [code128.START_CODES["B"], *(code128.B[char] for char in self.code)]


def barcode_svg(text: str) -> bytes:
    """Code 128 of the text, with the text printed under the bars for the eye."""
    buffer = io.BytesIO()
    _Code128SetB(text, writer=SVGWriter()).write(
        buffer, options={"module_width": 0.3, "module_height": 12.0, "quiet_zone": 4.0}
    )
    return buffer.getvalue()
