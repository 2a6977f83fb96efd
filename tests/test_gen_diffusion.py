"""The diffusion adapter end to end on CPU with tiny randomly initialised diffusers pipelines built and saved in the
test (tiny UNet, VAE, CLIP text encoder and a character-level CLIP tokenizer written here; no download)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

from agebias.errors import UserError  # noqa: E402
from generators.base import Identity  # noqa: E402
from generators.registry import create_generator  # noqa: E402
from generators.writer import generate_to  # noqa: E402


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789,.{}":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                         model_max_length=32), len(vocab)


def _tiny_pipeline(folder: Path, instruct: bool = False) -> Path:
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline,
                           StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok, n_vocab = _tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8,
                                in_channels=8 if instruct else 4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=4, sample_size=16)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                                        intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                                        vocab_size=n_vocab, max_position_embeddings=32))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    cls = StableDiffusionInstructPix2PixPipeline if instruct else StableDiffusionImg2ImgPipeline
    pipe = cls(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched, safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)
    out = folder / ("ip2p" if instruct else "img2img")
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd")
    return _tiny_pipeline(root), _tiny_pipeline(root, instruct=True)


def _faces(n=2):
    rng = np.random.default_rng(1)
    return [Identity(id=f"face{i}", seed=i + 1, image=(rng.random((112, 112, 3)) * 255).astype(np.uint8),
                     source=f"/photos/face{i}.png") for i in range(n)]


@pytest.mark.slow
def test_img2img_end_to_end_on_cpu(tiny_models, tmp_path):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threading overhead dominates on a shared 2-core machine
    try:
        img2img, _ = tiny_models
        gen = create_generator("diffusion", checkpoint=str(img2img), device="cpu", steps=2, resolution=32,
                               strength=0.8, guidance=5.0)
        assert gen.kind == "img2img"
        out = tmp_path / "out"
        res = generate_to(out, gen, _faces(2), [5, 70])
        assert res.written == 4 and not res.skipped
        rows = list(csv.DictReader(open(out / "manifest.csv")))
        assert [int(r["seed"]) for r in rows] == [1005, 1070, 2005, 2070]  # one seed per (identity, age)
        params = json.loads(rows[0]["parameters"])
        assert params["prompt"] == "a close-up photo of the face of a 5 year old person"
        assert params["strength"] == 0.8 and params["pipeline"] == "img2img"
        from PIL import Image

        a = np.asarray(Image.open(out / "face0" / "face0_5.png"), np.float32)
        b = np.asarray(Image.open(out / "face0" / "face0_70.png"), np.float32)
        assert a.shape == (32, 32, 3) and np.abs(a - b).mean() > 0.5
        # reproducible: same seeds give the same pixels in a fresh run
        gen2 = create_generator("diffusion", checkpoint=str(img2img), device="cpu", steps=2, resolution=32,
                                strength=0.8, guidance=5.0)
        generate_to(tmp_path / "again", gen2, _faces(1), [5])
        c = np.asarray(Image.open(tmp_path / "again" / "face0" / "face0_5.png"), np.float32)
        assert np.abs(a - c).max() <= 1
    finally:
        torch.set_num_threads(prev)


@pytest.mark.slow
def test_instruct_pix2pix_auto_detected(tiny_models, tmp_path):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, ip2p = tiny_models
        gen = create_generator("diffusion", checkpoint=str(ip2p), device="cpu", steps=2, resolution=32)
        assert gen.kind == "instruct-pix2pix"
        res = generate_to(tmp_path / "o", gen, _faces(1), [10])
        assert res.written == 1
        row = next(csv.DictReader(open(tmp_path / "o" / "manifest.csv")))
        p = json.loads(row["parameters"])
        assert p["prompt"] == "make the person 10 years old" and p["image_guidance"] == 1.5
    finally:
        torch.set_num_threads(prev)


def test_diffusion_bad_input(tmp_path):
    with pytest.raises(UserError, match="needs a model"):
        create_generator("diffusion")
    with pytest.raises(UserError, match="must contain"):
        create_generator("diffusion", checkpoint=str(tmp_path), prompt="an old person")
    gen = create_generator("diffusion", checkpoint=str(tmp_path), device="cpu")
    with pytest.raises(UserError, match="not a diffusers pipeline folder"):
        gen.load()
    with pytest.raises(UserError, match="not used by this generator: trust_checkpoint"):
        create_generator("diffusion", checkpoint=str(tmp_path), trust_checkpoint=True)


def test_experiment_file_aliases(tmp_path):
    gen = create_generator("diffusion", model=str(tmp_path), guidance_scale=3.0, num_inference_steps=5)
    assert gen.guidance == 3.0 and gen.steps == 5 and gen.model == str(tmp_path)
