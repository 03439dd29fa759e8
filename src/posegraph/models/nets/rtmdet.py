"""RTMDet (CSPNeXt + CSPNeXt-PAFPN + RTMDetSepBNHead), state-dict compatible with mmdet 3.x.

The network ends where mmdet's ``forward`` ends plus the sigmoid: it returns
per-prior class scores and box distances (already multiplied by the level stride),
all levels flattened and concatenated. Prior generation, top-k, decoding and NMS
live in numpy in :mod:`posegraph.stages.detect`, so exported models stay simple.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import conv_module_factory
from .cspnext import CSPNeXt, CSPNeXtPAFPN


class RTMDetSepBNHead(nn.Module):
    def __init__(
        self,
        *,
        strides: tuple[int, ...],
        num_classes: int,
        in_channels: int,
        feat_channels: int,
        stacked_convs: int = 2,
        share_conv: bool = True,
        use_depthwise: bool = False,
        exp_on_reg: bool = False,
        pred_kernel_size: int = 1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        conv = conv_module_factory(use_depthwise)
        self.exp_on_reg = exp_on_reg
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.rtm_cls = nn.ModuleList()
        self.rtm_reg = nn.ModuleList()
        for _ in self.strides:
            cls_convs, reg_convs = nn.ModuleList(), nn.ModuleList()
            for i in range(stacked_convs):
                chn = in_channels if i == 0 else feat_channels
                cls_convs.append(conv(chn, feat_channels, 3, stride=1, padding=1, eps=eps))
                reg_convs.append(conv(chn, feat_channels, 3, stride=1, padding=1, eps=eps))
            self.cls_convs.append(cls_convs)
            self.reg_convs.append(reg_convs)
            pad = pred_kernel_size // 2
            self.rtm_cls.append(nn.Conv2d(feat_channels, num_classes, pred_kernel_size, padding=pad))
            self.rtm_reg.append(nn.Conv2d(feat_channels, 4, pred_kernel_size, padding=pad))
        if share_conv:
            # "SepBN": the conv weights are shared across levels, the norms are not.
            for n in range(len(self.strides)):
                for i in range(stacked_convs):
                    self.cls_convs[n][i].conv = self.cls_convs[0][i].conv
                    self.reg_convs[n][i].conv = self.reg_convs[0][i].conv

    def forward(self, feats):
        scores, dists = [], []
        for idx, (x, stride) in enumerate(zip(feats, self.strides)):
            cls_feat, reg_feat = x, x
            for layer in self.cls_convs[idx]:
                cls_feat = layer(cls_feat)
            for layer in self.reg_convs[idx]:
                reg_feat = layer(reg_feat)
            cls_score = self.rtm_cls[idx](cls_feat)
            reg = self.rtm_reg[idx](reg_feat)
            reg = (reg.exp() if self.exp_on_reg else reg) * stride
            # (B, C, H, W) → (B, H*W, C): priors in row-major order, x fastest.
            scores.append(cls_score.flatten(2).transpose(1, 2))
            dists.append(reg.flatten(2).transpose(1, 2))
        return torch.cat(scores, 1).sigmoid(), torch.cat(dists, 1)


class RTMDet(nn.Module):
    def __init__(
        self,
        *,
        strides: tuple[int, ...],
        deepen_factor: float,
        widen_factor: float,
        neck_in_channels: list[int],
        neck_out_channels: int,
        num_csp_blocks: int,
        use_depthwise: bool = False,
        share_conv: bool = True,
        exp_on_reg: bool = True,
        num_classes: int = 1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.backbone = CSPNeXt(
            deepen_factor=deepen_factor,
            widen_factor=widen_factor,
            use_depthwise=use_depthwise,
            channel_attention=True,
            eps=eps,
        )
        self.neck = CSPNeXtPAFPN(
            neck_in_channels,
            neck_out_channels,
            num_csp_blocks=num_csp_blocks,
            use_depthwise=use_depthwise,
            eps=eps,
        )
        self.bbox_head = RTMDetSepBNHead(
            strides=strides,
            num_classes=num_classes,
            in_channels=neck_out_channels,
            feat_channels=neck_out_channels,
            share_conv=share_conv,
            use_depthwise=use_depthwise,
            exp_on_reg=exp_on_reg,
            eps=eps,
        )

    def forward(self, images):
        """images: (B, 3, H, W) normalised BGR → scores (B, N, C), distances (B, N, 4)."""
        return self.bbox_head(self.neck(self.backbone(images)))

