"""The official `openai` client against a running `sprout serve` (address in argv[1]).

Generates over real HTTP and checks that bad requests come back as the client's typed
errors with the right status and parameter.
"""

import base64
import struct
import sys
import urllib.request
import zlib

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def png(w: int, h: int) -> bytes:
    """A gray RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * (3 * w) for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


models = [m.id for m in client.models.list()]
assert models, "no models listed"

r = client.images.generate(
    model=models[0],
    prompt="a red circle",
    n=2,
    size="256x256",
    response_format="b64_json",
    extra_body={"seed": 5, "steps": 2},
)
assert len(r.data) == 2, r
for item in r.data:
    assert png_size(base64.b64decode(item.b64_json)) == (256, 256)
again = client.images.generate(
    model=models[0], prompt="a red circle", size="256x256", extra_body={"seed": 6, "steps": 2}
)
assert again.data[0].b64_json == r.data[1].b64_json, "image 1 of seed 5 is image 0 of seed 6"
by_url = client.images.generate(
    model=models[0], prompt="a red circle", response_format="url", extra_body={"seed": 6, "steps": 2}
)
with urllib.request.urlopen(by_url.data[0].url) as f:
    assert base64.b64encode(f.read()).decode() == again.data[0].b64_json, "the URL serves the same image"

for kwargs, status, param in [
    (dict(prompt="a red circle", n=0), 400, "n"),
    (dict(prompt="a red circle", size="7x7"), 400, "size"),
    (dict(prompt="a red circle", model="dall-e-3"), 404, "model"),
    (dict(prompt=""), 400, "prompt"),
]:
    try:
        client.images.generate(**kwargs)
    except openai.APIStatusError as e:
        assert e.status_code == status, (kwargs, e.status_code, e.body)
        assert e.body["param"] == param, (kwargs, e.body)
    else:
        raise AssertionError(f"{kwargs} was accepted")

# Edits: the upload is read and checked; a text-only model asked for an instruction edit
# (no mask) says so by name.
try:
    client.images.edit(model=models[0], image=("in.png", png(64, 64), "image/png"), prompt="make it blue")
except openai.BadRequestError as e:
    assert e.body["param"] == "model" and models[0] in e.body["message"], e.body
else:
    raise AssertionError("a text-only model accepted an edit")


def half_transparent_mask(w: int, h: int) -> bytes:
    """An RGBA PNG, transparent (= redraw) on its left half."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"".join(b"\x00\x00\x00" + (b"\x00" if x < w // 2 else b"\xff") for x in range(w)) for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# With a mask, the same model redraws the masked area (inpainting) and keeps the rest.
inpainted = client.images.edit(
    model=models[0],
    image=("in.png", png(64, 64), "image/png"),
    mask=("mask.png", half_transparent_mask(64, 64), "image/png"),
    prompt="a red circle",
    size="64x64",
    extra_body={"seed": 2, "steps": 2},
)
assert png_size(base64.b64decode(inpainted.data[0].b64_json)) == (64, 64), "a masked edit"
try:
    client.images.edit(image=("in.png", b"not an image", "image/png"), prompt="make it blue")
except openai.BadRequestError as e:
    assert e.body["param"] == "image[0]", e.body
else:
    raise AssertionError("a non-image upload was accepted")

print("openai client: generation, edits and errors ok")
