"""Attention taught by bleed masks: a loss on the Grad-CAM evidence a network puts outside a training bleed's mask.

Right-for-the-right-reasons (Ross et al. 2017) and GAIN (Li et al. 2018) in the form that matches what the tool
shows: the map is the same Grad-CAM of output 0 (hemorrhage) at the layer the depth rule picks, kept differentiable
(create_graph), so training moves exactly the evidence a reader later sees.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.nets.build import cam_layers, choose_cam_layers


def outside_evidence(cam: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per image, the share of the map's positive evidence that lies outside the mask: (B, h, w) maps and (B, h, w)
    0/1 masks -> (B,) in [0, 1]; 0 when every positive cell is inside the mask (or the map has none)."""
    positive = F.relu(cam).flatten(1)
    outside = (positive * (1 - mask.flatten(1).to(positive.dtype))).sum(1)
    return outside / (positive.sum(1) + eps)


def mask_on_grid(masks: torch.Tensor, side: tuple[int, int]) -> torch.Tensor:
    """(B, S, S) 0/1 masks -> (B, h, w): a cell is in the bleed when any of its pixels is (a small bleed still owns
    the cell its evidence lands in)."""
    return F.adaptive_max_pool2d(masks[:, None].float(), side)[:, 0]


class MaskAttentionLoss(torch.nn.Module):
    """The classification loss plus `weight` x the mean outside_evidence of the batch's bleeds with a mask (those the
    network calls, logit > 0, with `called_only`), from a hook on the network's CAM layer (the depth rule's,
    choose_cam_layers). Called as the loop's loss_fn:
    (logits, targets) without masks, (logits, targets, masks, has_mask) with them."""

    def __init__(self, classification: torch.nn.Module, model: torch.nn.Module, input_size: int, weight: float,
                 called_only: bool = True):
        super().__init__()
        self.classification, self.weight, self.activations = classification, weight, None
        self.called_only = called_only
        model.cam_layer_names = choose_cam_layers(model, input_size)["layers"]
        self.layer = model.cam_layer_names[0]
        self.handle = cam_layers(model)[0].register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        if torch.is_grad_enabled():   # training steps only: evaluation keeps no graph
            self.activations = output

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor | None = None,
                has_mask: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.classification(logits, targets)
        # Only bleeds the network already calls: asked where it looks before it can find any, it learns neither.
        judged = has_mask & (logits[:, 0].detach() > 0) if self.called_only else has_mask
        if masks is None or not bool(judged.any()):
            return loss
        acts = self.activations
        grads, = torch.autograd.grad(logits[:, 0].sum(), acts, create_graph=True)
        cam = (grads.mean((2, 3), keepdim=True) * acts).sum(1).float()   # Grad-CAM before its ReLU
        inside = mask_on_grid(masks, cam.shape[-2:])
        return loss + self.weight * outside_evidence(cam[judged], inside[judged]).mean()

    def remove(self) -> None:
        """Unhook (the trained network is saved and explained without it)."""
        self.handle.remove()
        self.activations = None
