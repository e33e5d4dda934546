"""Loss terms shared by several DFKD methods."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton KD: KL(softmax(t/T) || softmax(s/T)) summed over classes, averaged over the batch, times T^2."""
    t = temperature
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    q = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


class BatchNormStatistics:
    """DeepInversion's feature-statistics prior (Yin et al., CVPR 2020).

    Forward hooks on every BatchNorm layer of ``model`` compute, while ``recording()`` is active,
    ``||running_var - batch_var||_2 + ||running_mean - batch_mean||_2`` of each layer's input (biased
    variance, as in the DeepInversion and CPSC-DFKD code). ``loss()`` sums them over the layers.
    Outside ``recording()`` the hooks do nothing, so student steps pay nothing for them.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm layer")
        self._terms: list[torch.Tensor] = []
        self._active = False
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module, inputs, output):
        if not self._active:
            return
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        self._terms.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2))

    def recording(self):
        stats = self

        class _Ctx:
            def __enter__(self):
                stats._terms = []
                stats._active = True

            def __exit__(self, *exc):
                stats._active = False

        return _Ctx()

    def loss(self) -> torch.Tensor:
        if not self._terms:
            raise RuntimeError("no BatchNorm statistics recorded: run the teacher inside recording()")
        return torch.stack(self._terms).sum()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                           base_temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020), contrast mode 'all'.

    ``features``: [batch, views, dim], already L2-normalised. Positives of an anchor are every other view
    with the same label (its own other views included); the anchor itself is excluded.
    """
    b, v, _ = features.shape
    feats = features.float().transpose(0, 1).reshape(b * v, -1)          # view-major, as torch.cat(unbind(1))
    logits = feats @ feats.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    lab = labels.repeat(v)
    self_mask = torch.eye(b * v, dtype=torch.bool, device=feats.device)
    positive = (lab[:, None] == lab[None, :]) & ~self_mask
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(self_mask, 0.0)
    mean_log_prob_pos = (log_prob * positive).sum(1) / positive.sum(1).clamp(min=1)
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def entropy_of_mean(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the batch-mean class distribution (DAFL's information-entropy term)."""
    p = probs.mean(0)
    return -(p * torch.log(p.clamp_min(1e-12))).sum()
