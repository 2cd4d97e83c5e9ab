"""GAN losses as pure functions of discriminator logits. No state, no optimisers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Discriminator loss from logits [N] on real and fake samples.

    hinge: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))] (Lim & Ye 2017, SNGAN/BigGAN);
    nonsaturating: softplus form of the original GAN cross entropy.
    """
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "nonsaturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Generator loss from logits [N] on fakes: -E[D(G(z))] (hinge) or softplus(-D(G(z)))."""
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "nonsaturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E[||grad_x D(x)||^2] on real data.

    `real_inputs` must require grad and be the tensor `real_logits` was computed from.
    create_graph=True so the penalty itself is differentiated w.r.t. D's weights.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()  # grad: [N, C, H, W]
