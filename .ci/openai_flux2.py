"""The official `openai` client against `sprout serve --model flux2-klein|flux2-dev` on a
tiny FLUX.2 snapshot of the parity fixtures (address in argv[1], model in argv[2], default
flux2-klein): generation, an edit with two reference images (`image[]`) over real HTTP, and
bad edits refused by name (one reference more than the model takes: klein 4, dev 10).
"""

import base64
import struct
import sys
import zlib

import openai

base = sys.argv[1]
model = sys.argv[2] if len(sys.argv) > 2 else "flux2-klein"
most = {"flux2-klein": 4, "flux2-dev": 10}[model]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def png(w: int, h: int, k: int) -> bytes:
    """An RGB PNG whose pixels depend on k."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(((x * 7 + y * 3 + k * 50 + i * 40) % 256) for x in range(w) for i in range(3))
                    for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


models = [m.id for m in client.models.list()]
assert models == [model], models

r = client.images.generate(model=model, prompt="a red circle", size="48x32", extra_body={"seed": 1, "steps": 2})
assert png_size(base64.b64decode(r.data[0].b64_json)) == (48, 32)


def edit(images, **kw):
    return client.images.edit(model=model, image=images, prompt="put the cat from the first image on the second",
                              size="48x32", n=2, extra_body={"seed": 3, "steps": 2}, **kw)


two = edit([("a.png", png(64, 64, 0), "image/png"), ("b.png", png(96, 64, 1), "image/png")])
assert len(two.data) == 2, two
pngs = [base64.b64decode(d.b64_json) for d in two.data]
assert all(png_size(p) == (48, 32) for p in pngs)
assert pngs[0] != pngs[1], "images 0 and 1 of an edit come from different seeds"
other = edit([("a.png", png(64, 64, 0), "image/png"), ("c.png", png(96, 64, 2), "image/png")])
assert base64.b64decode(other.data[0].b64_json) != pngs[0], "the second reference changes the edit"


def refused(images, param, **kw):
    try:
        edit(images, **kw)
    except openai.BadRequestError as e:
        assert e.body["param"].startswith(param), e.body
        return e.body["message"]
    raise AssertionError(f"accepted; wanted a 400 naming {param}")


msg = refused([("a.png", png(64, 64, k), "image/png") for k in range(most + 1)], "image")
assert f"0..={most}" in msg, msg
refused([("a.png", png(64, 64, 0), "image/png"), ("b.png", b"not an image", "image/png")], "image[1]")
refused([("a.png", png(40, 64, 0), "image/png")], "image")
refused([("a.png", png(64, 64, 0), "image/png")], "mask", mask=("m.png", png(64, 64, 0), "image/png"))

print(f"openai client: {model} generation, two-reference edits, errors ok")
