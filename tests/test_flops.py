"""benchmark.flops: the FLOP counter behind benchmarks/cell_flops.py."""
import torch
import torch.nn as nn

from benchmark.flops import count_flops


def test_a_convolution_counts_two_flops_per_multiply_add_and_its_backward_twice_that():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    forward = 2 * 4 * 8 * 16 * 16 * 3 * 9
    assert count_flops(lambda: conv(x)) == forward
    # backward: the gradient with respect to the input and to the weight, each as costly as the forward pass
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_element_wise_work_is_not_counted_and_a_frozen_layer_costs_no_weight_gradient():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    assert count_flops(lambda: torch.relu(x * 2 + 1)) == 0
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False).requires_grad_(False)
    forward = 2 * 4 * 8 * 16 * 16 * 3 * 9
    assert count_flops(lambda: conv(x).sum().backward()) == 2 * forward


def test_gradients_with_respect_to_a_leaf_input_are_counted():
    # PRE-DFKD's replay step; torch's FlopCounterMode fails on it
    lin = nn.Linear(10, 5)
    z = torch.randn(7, 10, requires_grad=True)
    flops = count_flops(lambda: torch.autograd.grad(lin(z).sum(), [z]))
    assert flops == 2 * 7 * 10 * 5 * 2      # the forward matmul and the input-gradient matmul
