"""CSPNeXt backbone and CSPNeXt-PAFPN neck (RTMDet, RTMPose), state-dict compatible with mmdet 3.x."""

from __future__ import annotations

import torch
from torch import nn

from .common import ConvModule, DepthwiseSeparableConvModule, conv_module_factory

# [in_channels, out_channels, num_blocks, add_identity, use_spp] per stage, before width/depth scaling.
P5_STAGES = [
    [64, 128, 3, True, False],
    [128, 256, 6, True, False],
    [256, 512, 6, True, False],
    [512, 1024, 3, False, True],
]


class ChannelAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)
        self.act = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.act(self.fc(self.global_avgpool(x)))


class CSPNeXtBlock(nn.Module):
    def __init__(self, channels: int, add_identity: bool, use_depthwise: bool, eps: float) -> None:
        super().__init__()
        conv = conv_module_factory(use_depthwise)
        self.conv1 = conv(channels, channels, 3, stride=1, padding=1, eps=eps)
        self.conv2 = DepthwiseSeparableConvModule(channels, channels, 5, stride=1, padding=2, eps=eps)
        self.add_identity = add_identity

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class CSPLayer(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_blocks: int,
        add_identity: bool,
        use_depthwise: bool,
        channel_attention: bool,
        expand_ratio: float = 0.5,
        eps: float,
    ) -> None:
        super().__init__()
        mid = int(out_channels * expand_ratio)
        self.main_conv = ConvModule(in_channels, mid, 1, eps=eps)
        self.short_conv = ConvModule(in_channels, mid, 1, eps=eps)
        self.final_conv = ConvModule(2 * mid, out_channels, 1, eps=eps)
        self.blocks = nn.Sequential(
            *[CSPNeXtBlock(mid, add_identity, use_depthwise, eps) for _ in range(num_blocks)]
        )
        self.attention = ChannelAttention(2 * mid) if channel_attention else None

    def forward(self, x):
        x_final = torch.cat((self.blocks(self.main_conv(x)), self.short_conv(x)), dim=1)
        if self.attention is not None:
            x_final = self.attention(x_final)
        return self.final_conv(x_final)


class SPPBottleneck(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, eps: float, kernel_sizes=(5, 9, 13)) -> None:
        super().__init__()
        mid = in_channels // 2
        self.conv1 = ConvModule(in_channels, mid, 1, eps=eps)
        self.poolings = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = ConvModule(mid * (len(kernel_sizes) + 1), out_channels, 1, eps=eps)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.poolings], dim=1))


class CSPNeXt(nn.Module):
    def __init__(
        self,
        *,
        deepen_factor: float,
        widen_factor: float,
        out_indices=(2, 3, 4),
        use_depthwise: bool = False,
        expand_ratio: float = 0.5,
        channel_attention: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.out_indices = tuple(out_indices)
        stem_mid = int(P5_STAGES[0][0] * widen_factor // 2)
        self.stem = nn.Sequential(
            ConvModule(3, stem_mid, 3, stride=2, padding=1, eps=eps),
            ConvModule(stem_mid, stem_mid, 3, stride=1, padding=1, eps=eps),
            ConvModule(stem_mid, int(P5_STAGES[0][0] * widen_factor), 3, stride=1, padding=1, eps=eps),
        )
        conv = conv_module_factory(use_depthwise)
        self.layer_names = ["stem"]
        for i, (cin, cout, blocks, add_identity, use_spp) in enumerate(P5_STAGES):
            cin, cout = int(cin * widen_factor), int(cout * widen_factor)
            blocks = max(round(blocks * deepen_factor), 1)
            stage = [conv(cin, cout, 3, stride=2, padding=1, eps=eps)]
            if use_spp:
                stage.append(SPPBottleneck(cout, cout, eps))
            stage.append(
                CSPLayer(
                    cout,
                    cout,
                    num_blocks=blocks,
                    add_identity=add_identity,
                    use_depthwise=use_depthwise,
                    channel_attention=channel_attention,
                    expand_ratio=expand_ratio,
                    eps=eps,
                )
            )
            self.add_module(f"stage{i + 1}", nn.Sequential(*stage))
            self.layer_names.append(f"stage{i + 1}")

    def forward(self, x):
        outs = []
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


class CSPNeXtPAFPN(nn.Module):
    def __init__(
        self,
        in_channels: list[int],
        out_channels: int,
        *,
        num_csp_blocks: int,
        use_depthwise: bool = False,
        expand_ratio: float = 0.5,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        conv = conv_module_factory(use_depthwise)
        csp = dict(
            num_blocks=num_csp_blocks,
            add_identity=False,
            use_depthwise=use_depthwise,
            channel_attention=False,
            expand_ratio=expand_ratio,
            eps=eps,
        )
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.reduce_layers = nn.ModuleList()
        self.top_down_blocks = nn.ModuleList()
        for idx in range(len(in_channels) - 1, 0, -1):
            self.reduce_layers.append(ConvModule(in_channels[idx], in_channels[idx - 1], 1, eps=eps))
            self.top_down_blocks.append(CSPLayer(in_channels[idx - 1] * 2, in_channels[idx - 1], **csp))
        self.downsamples = nn.ModuleList()
        self.bottom_up_blocks = nn.ModuleList()
        for idx in range(len(in_channels) - 1):
            self.downsamples.append(conv(in_channels[idx], in_channels[idx], 3, stride=2, padding=1, eps=eps))
            self.bottom_up_blocks.append(CSPLayer(in_channels[idx] * 2, in_channels[idx + 1], **csp))
        self.out_convs = nn.ModuleList(
            conv(c, out_channels, 3, padding=1, eps=eps) for c in in_channels
        )

    def forward(self, inputs):
        n = len(self.in_channels)
        inner_outs = [inputs[-1]]
        for idx in range(n - 1, 0, -1):
            feat_high = self.reduce_layers[n - 1 - idx](inner_outs[0])
            inner_outs[0] = feat_high
            inner_outs.insert(
                0,
                self.top_down_blocks[n - 1 - idx](torch.cat([self.upsample(feat_high), inputs[idx - 1]], 1)),
            )
        outs = [inner_outs[0]]
        for idx in range(n - 1):
            down = self.downsamples[idx](outs[-1])
            outs.append(self.bottom_up_blocks[idx](torch.cat([down, inner_outs[idx + 1]], 1)))
        return tuple(conv(out) for conv, out in zip(self.out_convs, outs))
