"""Parity fixtures for FLUX.2 [dev]'s text side and pipeline, made with the reference.

Builds a tiny seeded `Mistral3ForConditionalGeneration` (Mistral Small 3.2's layout: the
Mistral language model beside a Pixtral vision tower the pipeline never runs) and a
byte-level tokenizer with Mistral's control tokens and its chat template (system prompt,
`[INST]`, left padding as Mistral's Llama tokenizer pads), records
`Flux2Pipeline._get_mistral_3_small_prompt_embeds`, then runs diffusers' `Flux2Pipeline`
over a guidance-embedding transformer and the autoencoder of the klein fixtures, from given
latents: text to image, and an edit with two reference images. Writes
`mistral_io.safetensors`, `dev_pipeline_io.safetensors`, `mistral3_default_config.json`
(transformers' default Mistral3 sizes) and the snapshot `dev_snapshot/`
(its `vae/` is a link to `snapshot/vae`, the same seeded autoencoder) into
crates/sprout-models/tests/fixtures/flux2/. Needs no download; CI never runs it.

    venv/bin/python tools/flux-parity/make_flux2_dev_fixtures.py
"""

import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import make_fixtures as mf  # noqa: E402
import make_flux2_fixtures as k  # noqa: E402  (TINY, tiny_vae, ids)

mf.OUT = k.mf.OUT

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]"]
# Mistral Small 3.x's chat template reduced to what FLUX.2 [dev] renders: BOS, the system
# prompt, each user turn's text blocks inside [INST] … [/INST], no generation prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['content'] is string %}{% set text = m['content'] %}"
    "{% else %}{% set text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% endif %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]{{ text }}[/INST]{% endif %}"
    "{% endfor %}")
TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, rope_theta=1000000000.0, rms_norm_eps=1e-5, max_position_embeddings=256, sliding_window=None,
            hidden_act="silu", tie_word_embeddings=False)
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
              image_size=32, patch_size=16, num_channels=3)
TAPS = (2, 4, 6)
# The system prompt is long; the tiny fixture keeps room for the prompts after it.
MAX_LEN = 96
PROMPTS = ["a photo of a red circle", "make the circle blue and put the star from the second image on it"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [SYSTEM_MESSAGE] * 5 + [f"a photo of a red circle and a blue star number {i}" for i in range(50)]
    corpus += PROMPTS
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left", chat_template=CHAT_TEMPLATE,
                                   model_max_length=131072)


def tiny_mistral(tok):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    cfg = Mistral3Config(text_config=dict(TEXT, model_type="mistral", vocab_size=len(tok),
                                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                          eos_token_id=tok.eos_token_id),
                         vision_config=dict(VISION, model_type="pixtral"),
                         image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2,
                         projector_hidden_act="gelu", multimodal_projector_bias=False)
    model = Mistral3ForConditionalGeneration(cfg).eval()
    mf.randomise(model, 31, std=0.1)
    return model


def mistral_fixtures(tok, model):
    from diffusers import Flux2Pipeline
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    with torch.no_grad():
        embeds = Flux2Pipeline._get_mistral_3_small_prompt_embeds(model, tok, PROMPTS, max_sequence_length=MAX_LEN,
                                                                   hidden_states_layers=TAPS)
    enc = tok.apply_chat_template(format_input(PROMPTS), add_generation_prompt=False, tokenize=True,
                                  return_dict=True, padding="max_length", truncation=True, max_length=MAX_LEN)
    text = tok.apply_chat_template(format_input(PROMPTS), add_generation_prompt=False, tokenize=False)
    assert all(m == 0 for m in enc["attention_mask"][0][: 10]), "the fixture should pad on the left"
    mf.save("mistral_io.safetensors", dict(input_ids=torch.tensor(enc["input_ids"]).float(),
                                           attention_mask=torch.tensor(enc["attention_mask"]).float(),
                                           embeds=embeds),
            {"taps": list(TAPS), "prompts": PROMPTS, "rendered": text})


def pipeline_fixtures(vae, tok, mistral):
    """diffusers' Flux2Pipeline over the tiny parts from given initial latents, images in
    [0, 1]: text to image (3 steps, embedded guidance 4) and an edit with two references
    (2 steps, guidance 2.5); saved as a snapshot (`save_pretrained`, bf16)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel
    from PIL import Image

    tiny = dict(k.TINY, joint_attention_dim=len(TAPS) * TEXT["hidden_size"])
    transformer = Flux2Transformer2DModel(guidance_embeds=True, **tiny).eval()
    mf.randomise(transformer, 32, std=0.1)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096,
                                            time_shift_type="exponential")
    pipe = Flux2Pipeline(scheduler=sched, vae=vae, text_encoder=mistral, tokenizer=tok, transformer=transformer)
    g = torch.Generator().manual_seed(33)
    common = dict(height=32, width=48, max_sequence_length=MAX_LEN, text_encoder_out_layers=TAPS, output_type="pt")
    out = {}
    latents = torch.randn(1, 16, 8, 12, generator=g)
    with torch.no_grad():
        out["t2i_image"] = pipe(prompt=PROMPTS[0], num_inference_steps=3, guidance_scale=4.0,
                                latents=latents.clone(), **common).images
    out["t2i_latents"] = latents
    refs = [(torch.rand(64, 64, 3, generator=g) * 255).round().to(torch.uint8),
            (torch.rand(64, 96, 3, generator=g) * 255).round().to(torch.uint8)]
    latents = torch.randn(1, 16, 8, 12, generator=g)
    with torch.no_grad():
        out["edit_image"] = pipe(image=[Image.fromarray(r.numpy()) for r in refs], prompt=PROMPTS[1],
                                 num_inference_steps=2, guidance_scale=2.5, latents=latents.clone(), **common).images
    out["edit_ref0"], out["edit_ref1"] = (r.float() for r in refs)
    out["edit_latents"] = latents
    mf.save("dev_pipeline_io.safetensors", out, {"prompts": PROMPTS, "taps": list(TAPS), "max_len": MAX_LEN})
    snap = os.path.join(mf.OUT, "dev_snapshot")
    if not mf.REBUILD:
        shutil.rmtree(snap, ignore_errors=True)
        pipe.to(torch.bfloat16).save_pretrained(snap)
        pipe.to(torch.float32)
        # The autoencoder is the klein snapshot's (same seed, checked): one copy in the tree.
        from safetensors.torch import load_file

        ours = load_file(os.path.join(snap, "vae", "diffusion_pytorch_model.safetensors"))
        theirs = load_file(os.path.join(mf.OUT, "snapshot", "vae", "diffusion_pytorch_model.safetensors"))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
        shutil.rmtree(os.path.join(snap, "vae"))
        os.symlink(os.path.join("..", "snapshot", "vae"), os.path.join(snap, "vae"))
        for root, _, files in os.walk(snap):
            for f in files:
                print(os.path.relpath(os.path.join(root, f), snap), os.path.getsize(os.path.join(root, f)))


def mistral3_defaults():
    """transformers' default `Mistral3Config` (Mistral Small 3.x's sizes), for checking
    Sprout's Mistral Small 3.2 preset against it."""
    import json

    from transformers import Mistral3Config

    path = os.path.join(mf.OUT, "mistral3_default_config.json")
    cfg = Mistral3Config().to_dict()
    with open(path, "w") as f:
        json.dump({"model_type": cfg["model_type"], "text_config": cfg["text_config"]}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    mistral3_defaults()
    vae = k.tiny_vae()
    tok = tiny_tokenizer()
    mistral = tiny_mistral(tok)
    mistral_fixtures(tok, mistral)
    pipeline_fixtures(vae, tok, mistral)
