"""The network the optimizer trains: the backbone's trainable part, the margin head and the hooks' modules."""

from __future__ import annotations

import torch
from torch import nn

from agebias.finetune.freeze import has_stages, run_stages
from agebias.finetune.hooks import StepContext, TrainingHooks, as_loss_terms
from agebias.models.heads import margin_loss


class TrainNet(nn.Module):
    """Trainable part + head + hook modules; ``forward`` returns ``(total loss, head loss, {term: loss})``.

    ``start`` is the first stage run here (0 = the first stage, e.g. the stem; the number of stages = only the
    head); its input is the frozen prefix's output (or the images when ``start == 0``). Backbones without stages run
    whole. With ``channels_last`` (bf16 and fp16 runs, see :func:`agebias.precision.channels_last`) the 4-D weights
    of every part, the frozen prefix included, and the inputs are channels-last.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, hooks: TrainingHooks, start: int, focal_gamma: float,
                 channels_last: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.extra = hooks.modules() or nn.Module()
        self._hooks = [hooks]  # a list so that the hooks object is not registered as a submodule
        self.start = start
        self.focal_gamma = focal_gamma
        self.staged = has_stages(backbone)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def embed_from(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        if self.staged:
            fmap = run_stages(self.backbone, x, self.start)
            return fmap, self.backbone.forward_head(fmap)
        return None, self.backbone(x)

    def forward(self, x, labels, original_labels, groups, epoch: int, step: int, generator: torch.Generator):
        hooks = self._hooks[0]
        fmap, emb = self.embed_from(x)
        ctx = StepContext(epoch=epoch, step=step, labels=labels, original_labels=original_labels, groups=groups,
                          feature_maps=fmap, embeddings=emb, head=self.head,
                          forward_head=getattr(self.backbone, "forward_head", None), generator=generator)
        emb = hooks.transform_embeddings(emb, ctx)
        ctx.embeddings = emb
        logits = self.head(emb, labels, hooks.margin_offsets(ctx))
        loss = margin_loss(logits, labels, self.focal_gamma)
        ctx.logits, ctx.loss = logits, loss
        terms = as_loss_terms(hooks.extra_loss(ctx))
        total = loss + sum(terms.values()) if terms else loss
        return total, loss.detach(), {k: v.detach() for k, v in terms.items()}
