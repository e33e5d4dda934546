"""Which parameters a loss reaches: one flag per parameter, shared by the method tests."""
import torch


def nonzero_grads(loss: torch.Tensor, params) -> list[bool]:
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return [g is not None and bool(g.abs().sum() > 0) for g in grads]
