"""Building blocks: output shapes, and parameter counts against figures computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.blocks import (
    BasicBlock,
    Bottleneck,
    ConvNormAct,
    DepthwiseSeparableConv,
    InceptionModule,
    SqueezeExcite,
    create_pool2d,
    global_pool,
    projection_shortcut,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_conv_norm_act_shape_and_params():
    block = ConvNormAct(3, 16, 3, stride=2)
    assert block(torch.randn(2, 3, 9, 9)).shape == (2, 16, 5, 5)  # "same" padding: ceil(9 / 2)
    assert block.conv.bias is None  # BN absorbs the bias
    assert n_params(block) == 3 * 16 * 9 + 2 * 16  # conv weights + BN gamma, beta
    plain = ConvNormAct(3, 16, 5, norm_layer=None, act_layer=None)
    assert n_params(plain) == 3 * 16 * 25 + 16
    x = torch.randn(1, 3, 7, 7)
    assert torch.equal(plain(x), plain.conv(x))  # no norm, no activation


def test_conv_norm_act_applies_relu():
    block = ConvNormAct(1, 4, 1).eval()
    assert (block(torch.randn(2, 1, 6, 6)) >= 0).all()


def test_depthwise_separable_vs_plain_conv_weights():
    sep = DepthwiseSeparableConv(64, 128, 3, bias=False)
    plain = nn.Conv2d(64, 128, 3, padding=1, bias=False)
    assert n_params(sep) == 64 * 9 + 64 * 128  # depthwise + pointwise
    assert n_params(plain) == 64 * 128 * 9
    assert sep.conv_dw.groups == 64
    x = torch.randn(2, 64, 10, 10)
    assert sep(x).shape == plain(x).shape == (2, 128, 10, 10)
    strided = DepthwiseSeparableConv(64, 128, 3, stride=2, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)
    assert strided(x).shape == (2, 128, 5, 5)
    assert n_params(strided) == 64 * 9 + 64 * 128 + 2 * 128
    mobilenet = DepthwiseSeparableConv(64, 128, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU, dw_norm_act=True)
    assert n_params(mobilenet) == 64 * 9 + 2 * 64 + 64 * 128 + 2 * 128


def test_depthwise_conv_filters_each_channel_alone():
    sep = DepthwiseSeparableConv(4, 4, 3)
    x = torch.zeros(1, 4, 5, 5)
    x[0, 2] = torch.randn(5, 5)
    dw = sep.conv_dw(x)
    assert torch.count_nonzero(dw[0, [0, 1, 3]]) == 0  # channels 0, 1, 3 saw only zeros
    assert torch.count_nonzero(dw[0, 2]) > 0


def test_squeeze_excite_params_and_gate():
    se = SqueezeExcite(64, reduction=16, min_channels=1)
    assert n_params(se) == 64 * 4 + 4 + 4 * 64 + 64  # FC 64->4 (+bias), FC 4->64 (+bias)
    assert n_params(SqueezeExcite(64)) == 64 * 8 + 8 + 8 * 64 + 64  # reduced width floored at 8
    assert n_params(SqueezeExcite(512)) == 512 * 32 + 32 + 32 * 512 + 512
    x = torch.randn(2, 64, 5, 5)
    assert se(x).shape == x.shape
    nn.init.zeros_(se.fc2.weight)
    nn.init.zeros_(se.fc2.bias)
    torch.testing.assert_close(se(x), x * 0.5)  # sigmoid(0) = 0.5 on every channel
    nn.init.constant_(se.fc2.bias, -100.0)
    assert se(x).abs().max() < 1e-6  # a closed gate shuts the channel


def test_basic_block_identity_and_projection():
    same = BasicBlock(64, 64)
    assert same.downsample is None
    assert n_params(same) == 2 * (64 * 64 * 9) + 2 * (2 * 64)
    x = torch.randn(2, 64, 8, 8)
    assert same(x).shape == (2, 64, 8, 8)

    down = BasicBlock(64, 128, stride=2)
    conv = 64 * 128 * 9 + 128 * 128 * 9
    bns = 2 * (2 * 128)
    projection = 64 * 128 + 2 * 128  # 1x1 conv + BN
    assert n_params(down) == conv + bns + projection
    assert down(x).shape == (2, 128, 4, 4)


def test_basic_block_adds_the_shortcut():
    block = BasicBlock(8, 8).eval()
    nn.init.zeros_(block.bn2.weight)  # residual branch outputs 0 ...
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(block(x), torch.relu(x))  # ... so the block is relu(identity)


def test_bottleneck_params_and_expansion():
    same = Bottleneck(256, 64)
    assert same.downsample is None
    assert n_params(same) == 256 * 64 + 64 * 64 * 9 + 64 * 256 + 2 * (64 + 64 + 256)
    first = Bottleneck(64, 64)  # ResNet-50's first block: 64 -> 256 needs a projection
    assert n_params(first) == 64 * 64 + 64 * 64 * 9 + 64 * 256 + 2 * (64 + 64 + 256) + 64 * 256 + 2 * 256
    down = Bottleneck(256, 128, stride=2)
    assert down(torch.randn(2, 256, 8, 8)).shape == (2, 512, 4, 4)
    assert down.conv2.stride == (2, 2) and down.conv1.stride == (1, 1)  # stride on the 3x3 (v1.5)


def test_residual_blocks_take_attention_before_the_add():
    block = BasicBlock(32, 32, attn_layer=lambda c: SqueezeExcite(c, min_channels=1))
    assert n_params(block) == n_params(BasicBlock(32, 32)) + (32 * 2 + 2 + 2 * 32 + 32)
    assert block(torch.randn(2, 32, 4, 4)).shape == (2, 32, 4, 4)


def test_projection_shortcut():
    assert projection_shortcut(16, 16, 1) is None
    proj = projection_shortcut(16, 32, 2)
    assert proj(torch.randn(1, 16, 7, 7)).shape == (1, 32, 4, 4)
    assert n_params(proj) == 16 * 32 + 2 * 32


def test_inception_module_concat_and_params():
    # GoogLeNet's inception (3a): 192 in; 64 | 96 -> 128 | 16 -> 32 | pool -> 32.
    block = InceptionModule(192, 64, 96, 128, 16, 32, 32)
    out = block(torch.randn(2, 192, 7, 7))
    assert out.shape == (2, 64 + 128 + 32 + 32, 7, 7) == (2, 256, 7, 7)
    assert block.out_chs == 256
    expected = (
        (192 * 64 + 2 * 64)
        + (192 * 96 + 2 * 96) + (96 * 128 * 9 + 2 * 128)
        + (192 * 16 + 2 * 16) + (16 * 32 * 25 + 2 * 32)
        + (192 * 32 + 2 * 32)
    )  # fmt: skip
    assert n_params(block) == expected
    # Branch order of the concatenation: the first 64 channels are the 1x1 branch.
    block.eval()
    x = torch.randn(1, 192, 7, 7)
    torch.testing.assert_close(block(x)[:, :64], block.branch1(x))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_local_pooling(kind: str):
    pool = create_pool2d(kind, 2)
    assert pool(torch.randn(1, 3, 8, 8)).shape == (1, 3, 4, 4)
    overlapping = create_pool2d(kind, 3, stride=2, padding=1)
    assert overlapping(torch.randn(1, 3, 9, 9)).shape == (1, 3, 5, 5)


def test_pool_values():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
    assert create_pool2d("max", 2)(x).item() == 6.0
    assert create_pool2d("avg", 2)(x).item() == 3.0
    # Average pooling ignores the zero padding: a constant map stays constant at the borders.
    ones = torch.ones(1, 1, 4, 4)
    torch.testing.assert_close(create_pool2d("avg", 3, stride=1, padding=1)(ones), ones)


def test_global_pooling():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    torch.testing.assert_close(global_pool("avg")(x).flatten(1), x.mean((2, 3)))
    torch.testing.assert_close(global_pool("max")(x).flatten(1), x.amax((2, 3)))
    assert global_pool("avg", 7)(torch.randn(1, 3, 14, 14)).shape == (1, 3, 7, 7)


def test_unknown_pooling_raises():
    with pytest.raises(ValueError, match="unknown pooling"):
        create_pool2d("median")
    with pytest.raises(ValueError, match="unknown global pooling"):
        global_pool("sum")
