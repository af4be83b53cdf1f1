"""C7: the images a phone scans decode to what the code says — the QR to the code's url (so a
camera opens the payer page), the Code 128 barcode to the typed short code."""

from __future__ import annotations

import io

import cairosvg
import zxingcpp
from PIL import Image

from tests.api import Api


def decode(png: bytes, wanted: zxingcpp.BarcodeFormat) -> list[tuple[str, str]]:
    image = Image.open(io.BytesIO(png)).convert("L")
    # Asking for the one symbology in play: a wide Code 128 can also read as a spurious EAN.
    return [(str(r.format), r.text) for r in zxingcpp.read_barcodes(image, formats=wanted)]


def test_qr_png_and_svg_decode_to_the_code_url(api: Api) -> None:
    """Both QR renderings carry exactly the code's url, at any valid scale."""
    payee, agent = api.user(), api.user()
    agency = api.agency(payee, agent)
    code = api.post(
        "/codes", agent, json={"agency_id": agency["id"], "kind": "dynamic", "amount": 1250}
    ).json()
    for scale in (None, 3, 12):
        suffix = f"?scale={scale}" if scale else ""
        png = api.get(f"/codes/{code['id']}/qr.png{suffix}", agent)
        assert png.status_code == 200 and png.headers["content-type"].startswith("image/png")
        assert decode(png.content, zxingcpp.BarcodeFormat.QRCode) == [("QR Code", code["url"])]
    svg = api.get(f"/codes/{code['id']}/qr.svg", payee)
    assert svg.headers["content-type"].startswith("image/svg+xml")
    rendered = cairosvg.svg2png(bytestring=svg.content, output_width=600, background_color="white")
    assert decode(rendered, zxingcpp.BarcodeFormat.QRCode) == [("QR Code", code["url"])]


def test_barcode_decodes_to_the_short_code(api: Api) -> None:
    """The Code 128 barcode reads back as the short code a payer would type."""
    payee, agent = api.user(), api.user()
    agency = api.agency(payee, agent)
    code = api.post("/codes", payee, json={"agency_id": agency["id"], "kind": "static"}).json()
    svg = api.get(f"/codes/{code['id']}/barcode.svg", agent)
    assert svg.status_code == 200
    rendered = cairosvg.svg2png(bytestring=svg.content, output_width=1200, background_color="white")
    results = decode(rendered, zxingcpp.BarcodeFormat.Code128)
    assert len(results) == 1
    fmt, text = results[0]
    assert fmt == "Code 128"
    assert text.replace("-", "") == code["short_code"].replace("-", "")
    typed = api.get(f"/scan/{text}", api.user())
    assert typed.status_code == 200 and typed.json()["payee"]["handle"] == payee.handle


def test_images_are_for_the_agent_and_payee_only(api: Api) -> None:
    """A third account, or no login, gets no image of someone else's code."""
    payee, agent, stranger = api.user(), api.user(), api.user()
    agency = api.agency(payee, agent)
    code = api.post("/codes", agent, json={"agency_id": agency["id"], "kind": "static"}).json()
    for image in ("qr.svg", "qr.png", "barcode.svg"):
        assert api.get(f"/codes/{code['id']}/{image}", stranger).status_code == 404
        assert api.get(f"/codes/{code['id']}/{image}").status_code == 401
