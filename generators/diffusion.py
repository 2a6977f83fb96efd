"""``diffusion``: age-editing of real faces with diffusers pipelines and age prompts.

Two pipeline kinds (``pipeline=``):

- ``img2img`` (``StableDiffusionImg2ImgPipeline``): the source face is noised to ``strength`` (0..1; higher =
  more change, less identity) and denoised towards ``prompt`` (default
  ``"a close-up photo of the face of a {age} year old person"``) with classifier-free ``guidance`` (7.5);
- ``instruct-pix2pix`` (``StableDiffusionInstructPix2PixPipeline``): an edit instruction (default
  ``"make the person {age} years old"``) with text ``guidance`` and ``image_guidance`` (1.5).

``auto`` picks from the model's ``model_index.json`` (``_class_name``). ``{age}`` in prompts is replaced by the
target age. Every (identity, age) gets its own seed, ``identity seed * 1000 + age`` (``torch.Generator``), so a
rerun reproduces the image and ages of one identity are comparable. The source is an FFHQ-style crop
(:mod:`generators.ffhq_crop`) at ``resolution`` px (default 512). The model comes from ``checkpoint=``: a local
pipeline folder (loaded with ``local_files_only``) or a hub id (downloaded only where the machine can reach the
hub). diffusers has no dedicated aging pipeline; age-specific fine-tunes such as FADING load the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from agebias.errors import UserError
from generators.ages import AgesArg, ages_for
from generators.base import Generator, Identity, Sample
from generators.checkout import pick_device

PROMPTS = {"img2img": "a close-up photo of the face of a {age} year old person",
           "instruct-pix2pix": "make the person {age} years old"}
PIPELINES = {"img2img": "StableDiffusionImg2ImgPipeline", "instruct-pix2pix": "StableDiffusionInstructPix2PixPipeline"}


def sample_seed(identity_seed: int | None, age: int) -> int:
    """The seed of one (identity, age) sample."""
    return int(identity_seed or 0) * 1000 + int(age)


class DiffusionGenerator(Generator):
    """diffusers img2img / InstructPix2Pix age editor."""

    name = "diffusion"
    needs = "sources"
    wants_landmarks = True
    description = "diffusers img2img or InstructPix2Pix with age prompts (local model folder or hub id)"

    def __init__(self, checkpoint: str | Path | None = None, pipeline: str = "auto", prompt: str | None = None,
                 negative_prompt: str | None = "cartoon, painting, blurry, deformed",
                 strength: float = 0.5, guidance: float = 7.5, image_guidance: float = 1.5, steps: int = 30,
                 resolution: int = 512, device: str | None = None, batch_size: int = 1, pipe: Any = None,
                 guidance_scale: float | None = None, num_inference_steps: int | None = None,
                 model: str | Path | None = None, **unused: Any) -> None:
        # aliases (diffusers' own argument names and ``model``) accepted from experiment files
        guidance = guidance if guidance_scale is None else guidance_scale
        steps = steps if num_inference_steps is None else num_inference_steps
        checkpoint = checkpoint or model
        bad = {k for k, v in unused.items() if v not in (None, False)}
        if bad:
            raise UserError(f"diffusion: option(s) not used by this generator: {', '.join(sorted(bad))}")
        if pipe is None and not checkpoint:
            raise UserError("diffusion needs a model: --checkpoint PATH_OR_HUB_ID (a diffusers pipeline folder, "
                            "e.g. a Stable Diffusion 1.5 or InstructPix2Pix model)")
        self.model = str(checkpoint) if checkpoint else getattr(pipe, "name_or_path", "<pipeline object>")
        if pipeline == "auto":
            pipeline = self._detect_kind(pipe)
        if pipeline not in PIPELINES:
            raise UserError(f"diffusion: pipeline {pipeline!r} must be auto, img2img or instruct-pix2pix")
        if not 0.0 < float(strength) <= 1.0:
            raise UserError(f"diffusion: strength {strength} must be in (0, 1]")
        if int(steps) < 1:
            raise UserError("diffusion: steps must be >= 1")
        self.kind = pipeline
        self.prompt = prompt or PROMPTS[pipeline]
        if "{age}" not in self.prompt:
            raise UserError("diffusion: the prompt must contain {age}")
        self.negative_prompt = negative_prompt or None
        self.strength, self.guidance, self.image_guidance = float(strength), float(guidance), float(image_guidance)
        self.steps, self.resolution = int(steps), int(resolution)
        self.device_request = device
        self.batch_size = max(1, int(batch_size))
        self.pipe = pipe
        self.device = None

    def _detect_kind(self, pipe: Any) -> str:
        name = type(pipe).__name__ if pipe is not None else ""
        index = Path(self.model) / "model_index.json"
        if not name and index.is_file():
            name = json.loads(index.read_text()).get("_class_name", "")
        return "instruct-pix2pix" if "InstructPix2Pix" in name else "img2img"

    def load(self) -> "DiffusionGenerator":
        if self.pipe is not None and self.device is not None:
            return self
        import torch

        self.device = pick_device(self.device_request)
        if self.pipe is None:
            import diffusers

            cls = getattr(diffusers, PIPELINES[self.kind])
            local = Path(self.model).expanduser()
            # float16 on CUDA; the default float32 elsewhere (no dtype argument: its name changed across versions)
            kw = {"torch_dtype": torch.float16} if self.device.startswith("cuda") else {}
            try:
                if local.exists():
                    if not (local / "model_index.json").is_file():
                        raise UserError(f"diffusion: {local} is not a diffusers pipeline folder (no model_index.json)")
                    self.pipe = cls.from_pretrained(str(local), local_files_only=True, **kw)
                else:
                    self.pipe = cls.from_pretrained(self.model, **kw)
            except UserError:
                raise
            except Exception as err:  # noqa: BLE001 - diffusers/hub raise many types; each becomes one line
                raise UserError(f"diffusion: cannot load {self.model} ({type(err).__name__}: {str(err)[:160]}); "
                                f"give a local pipeline folder, or a hub id on a machine that can reach the hub") \
                    from None
        self.pipe = self.pipe.to(self.device)
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)
        self._torch = torch
        return self

    def parameters(self) -> dict[str, Any]:
        p = {"model": self.model, "pipeline": self.kind, "prompt": self.prompt, "negative_prompt": self.negative_prompt,
             "guidance": self.guidance, "steps": self.steps, "resolution": self.resolution,
             "seed_rule": "identity_seed*1000+age"}
        if self.kind == "img2img":
            p["strength"] = self.strength
        else:
            p["image_guidance"] = self.image_guidance
        return p

    def _source(self, ident: Identity):
        from PIL import Image

        from generators.ffhq_crop import ffhq_crop

        if ident.original is not None and ident.landmarks is not None:
            crop = ffhq_crop(ident.original, ident.landmarks, self.resolution)
        elif ident.image is not None:
            from agebias.data.align import template_for

            crop = ffhq_crop(ident.image, template_for(ident.image.shape[0]), self.resolution)
        else:
            raise UserError("diffusion edits real faces: use --sources DIR")
        return Image.fromarray(crop)

    def __call__(self, identities: Iterable[Identity], ages: AgesArg) -> Iterator[Sample]:
        self.load()
        torch = self._torch
        gen_device = "cpu" if not self.device.startswith("cuda") else self.device
        for ident in identities:
            src = self._source(ident)
            for age in ages_for(ages, ident.id):
                seed = sample_seed(ident.seed, age)
                g = torch.Generator(device=gen_device).manual_seed(seed)
                kw: dict[str, Any] = dict(prompt=self.prompt.format(age=age), image=src, guidance_scale=self.guidance,
                                          num_inference_steps=self.steps, generator=g, output_type="np")
                if self.negative_prompt:
                    kw["negative_prompt"] = self.negative_prompt
                if self.kind == "img2img":
                    kw["strength"] = self.strength
                else:
                    kw["image_guidance_scale"] = self.image_guidance
                out = self.pipe(**kw)
                arr = np.asarray(out.images[0])
                image = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8) if arr.dtype != np.uint8 else arr
                nsfw = getattr(out, "nsfw_content_detected", None)
                info = {"seed": seed, "prompt": kw["prompt"]}
                if nsfw and nsfw[0]:
                    info["error"] = "the pipeline's safety checker blanked this image"
                    image = None
                yield Sample(ident, int(age), image, info)

    def close(self) -> None:
        self.pipe = None

    @classmethod
    def doctor(cls, checkpoint=None, **_: Any) -> list[tuple[str, bool, str]]:
        import importlib.util

        rows = [("diffusers", importlib.util.find_spec("diffusers") is not None,
                 "installed" if importlib.util.find_spec("diffusers") else "pip install 'agebias[diffusion]'")]
        if checkpoint:
            p = Path(checkpoint)
            ok = (p / "model_index.json").is_file()
            rows.append(("model", ok or not p.exists(), str(p) if ok else
                         (f"{p} is not a diffusers pipeline folder" if p.exists() else f"{p}: hub id (needs network)")))
        else:
            rows.append(("model", False, "pass --checkpoint PATH_OR_HUB_ID (a diffusers pipeline)"))
        return rows
