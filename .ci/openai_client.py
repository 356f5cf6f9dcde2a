"""The official `openai` client against a running `sprout serve` (address in argv[1]).

Generates over real HTTP and checks that bad requests come back as the client's typed
errors with the right status and parameter.
"""

import base64
import struct
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


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

print("openai client: generation and errors ok")
