"""RTMPose top-down network (CSPNeXt + RTMCCHead with a GAU block), state-dict compatible with mmpose 1.x.

Returns the raw SimCC logits; decoding (argmax, flip averaging, mapping back to
the image) lives in numpy in :mod:`posegraph.stages.pose2d`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cspnext import CSPNeXt


class ScaleNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x):
        norm = torch.linalg.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class Scale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.scale


class GatedAttentionUnit(nn.Module):
    """mmpose ``RTMCCBlock`` in self-attention mode without relative bias or RoPE (RTMPose's settings)."""

    def __init__(self, dims: int, *, s: int = 128, expansion_factor: int = 2, act: str = "silu") -> None:
        super().__init__()
        self.s = s
        self.e = int(dims * expansion_factor)
        self.o = nn.Linear(self.e, dims, bias=False)
        self.uv = nn.Linear(dims, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.rand((2, s)))
        self.beta = nn.Parameter(torch.rand((2, s)))
        self.ln = ScaleNorm(dims, eps=1e-5)
        self.act_fn = nn.SiLU() if act == "silu" else nn.ReLU()
        self.res_scale = Scale(dims)
        self.sqrt_s = math.sqrt(s)

    def forward(self, x):
        uv = self.act_fn(self.uv(self.ln(x)))
        u, v, base = torch.split(uv, [self.e, self.e, self.s], dim=2)
        base = base.unsqueeze(2) * self.gamma[None, None, :] + self.beta
        q, k = torch.unbind(base, dim=2)
        kernel = torch.square(F.relu(torch.bmm(q, k.permute(0, 2, 1)) / self.sqrt_s))
        return self.res_scale(x) + self.o(u * torch.bmm(kernel, v))


class RTMCCHead(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        num_keypoints: int,
        input_size: tuple[int, int],
        simcc_split_ratio: float = 2.0,
        final_layer_kernel_size: int = 7,
        hidden_dims: int = 256,
        s: int = 128,
        expansion_factor: int = 2,
        act: str = "silu",
    ) -> None:
        super().__init__()
        w, h = input_size
        flatten_dims = (w // 32) * (h // 32)
        self.final_layer = nn.Conv2d(
            in_channels,
            num_keypoints,
            kernel_size=final_layer_kernel_size,
            stride=1,
            padding=final_layer_kernel_size // 2,
        )
        self.mlp = nn.Sequential(ScaleNorm(flatten_dims), nn.Linear(flatten_dims, hidden_dims, bias=False))
        self.gau = GatedAttentionUnit(hidden_dims, s=s, expansion_factor=expansion_factor, act=act)
        self.cls_x = nn.Linear(hidden_dims, int(w * simcc_split_ratio), bias=False)
        self.cls_y = nn.Linear(hidden_dims, int(h * simcc_split_ratio), bias=False)

    def forward(self, feats):
        x = torch.flatten(self.final_layer(feats[-1]), 2)
        x = self.gau(self.mlp(x))
        return self.cls_x(x), self.cls_y(x)


class RTMPose(nn.Module):
    def __init__(
        self,
        *,
        deepen_factor: float,
        widen_factor: float,
        input_size: tuple[int, int] = (192, 256),
        num_keypoints: int = 17,
        simcc_split_ratio: float = 2.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.backbone = CSPNeXt(
            deepen_factor=deepen_factor,
            widen_factor=widen_factor,
            out_indices=(4,),
            channel_attention=True,
            eps=eps,
        )
        self.head = RTMCCHead(
            in_channels=int(1024 * widen_factor),
            num_keypoints=num_keypoints,
            input_size=input_size,
            simcc_split_ratio=simcc_split_ratio,
        )

    def forward(self, crops):
        """crops: (B, 3, h, w) normalised RGB → simcc_x (B, K, w·r), simcc_y (B, K, h·r)."""
        return self.head(self.backbone(crops))
