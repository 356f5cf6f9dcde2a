"""The official `openai` client against `sprout serve --model flux-kontext` on the tiny
parity fixtures (address in argv[1]): generation and an edit with two input images over
real HTTP, with the OpenAI request shapes, a masked edit, and a mask of the wrong size
refused by name.
"""

import base64
import struct
import sys
import zlib

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def png(w: int, h: int, k: int, alpha: bool = False) -> bytes:
    """An RGB (or RGBA) PNG whose pixels depend on k."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    c = 4 if alpha else 3
    rows = b"".join(
        b"\x00" + bytes(((x * 7 + y * 3 + k * 50 + i * 40) % 256) for x in range(w) for i in range(c))
        for y in range(h)
    )
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6 if alpha else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


models = [m.id for m in client.models.list()]
assert models == ["flux-kontext"], models

r = client.images.generate(model="flux-kontext", prompt="a red circle", size="32x32", extra_body={"seed": 1, "steps": 2})
assert png_size(base64.b64decode(r.data[0].b64_json)) == (32, 32)


def edit(images, **kw):
    return client.images.edit(
        model="flux-kontext",
        image=images,
        prompt="make it blue",
        size="32x32",
        n=2,
        extra_body={"seed": 3, "steps": 2},
        **kw,
    )


two = edit([("a.png", png(40, 24, 0), "image/png"), ("b.png", png(24, 24, 1), "image/png")])
assert len(two.data) == 2, two
pngs = [base64.b64decode(d.b64_json) for d in two.data]
assert all(png_size(p) == (32, 32) for p in pngs)
assert pngs[0] != pngs[1], "images 0 and 1 of an edit come from different seeds"
other = edit([("a.png", png(40, 24, 0), "image/png"), ("c.png", png(24, 24, 2), "image/png")])
assert base64.b64decode(other.data[0].b64_json) != pngs[0], "the second reference changes the edit"

masked = edit([("a.png", png(40, 24, 0), "image/png")], mask=("m.png", png(40, 24, 0, alpha=True), "image/png"))
assert all(png_size(base64.b64decode(d.b64_json)) == (32, 32) for d in masked.data), "a masked edit"

try:
    edit([("a.png", png(40, 24, 0), "image/png")], mask=("m.png", png(32, 32, 0, alpha=True), "image/png"))
except openai.BadRequestError as e:
    assert e.body["param"] == "mask", e.body
else:
    raise AssertionError("a mask of another size than the image was accepted")

print("openai client: flux-kontext generation, two-image and masked edits, errors ok")
