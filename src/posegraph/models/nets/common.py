"""Building blocks shared by the networks, named like mmcv's bricks.

The attribute names (``conv``, ``bn``, ``depthwise_conv``, ``pointwise_conv``) are
the contract with the official OpenMMLab checkpoints: a state dict saved by
mmdet/mmpose loads into these modules with ``strict=True``.
"""

from __future__ import annotations

from torch import nn

_ACTIVATIONS = {
    "silu": lambda: nn.SiLU(inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
    None: nn.Identity,
}


class ConvModule(nn.Module):
    """conv → batch norm → activation (mmcv ``ConvModule`` with ``order=('conv','norm','act')``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        *,
        dims: int = 2,
        eps: float = 1e-5,
        act: str | None = "silu",
    ) -> None:
        super().__init__()
        conv_cls = nn.Conv2d if dims == 2 else nn.Conv1d
        norm_cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        # mmcv's bias='auto': no conv bias when a norm layer follows.
        self.conv = conv_cls(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn = norm_cls(out_channels, eps=eps)
        self.activate = _ACTIVATIONS[act]()

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise k×k conv module followed by a pointwise 1×1 conv module."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        eps: float = 1e-5,
        act: str | None = "silu",
    ) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=in_channels,
            eps=eps,
            act=act,
        )
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, eps=eps, act=act)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


def conv_module_factory(use_depthwise: bool):
    return DepthwiseSeparableConvModule if use_depthwise else ConvModule
