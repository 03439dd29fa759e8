"""MotionBERT's DSTformer lifter (mmpose ``DSTFormer`` + ``MotionRegressionHead``).

Sequence to sequence: (B, T, 17, 3) normalised 2D keypoints + confidence in,
(B, T, 17, 3) 3D out, T ≤ the trained clip length (243).
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, mode: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.mode = mode
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, seq_len: int):
        bf, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(bf, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (BF, H, N, C/H)
        if self.mode == "spatial":
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            out = (attn @ v).transpose(1, 2).reshape(bf, n, c)
        else:  # temporal: attend over frames, per joint
            def frames(t):
                return t.reshape(-1, seq_len, h, n, c // h).permute(0, 2, 3, 1, 4)  # (B, H, N, T, C/H)

            qt, kt, vt = frames(q), frames(k), frames(v)
            attn = ((qt @ kt.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            out = (attn @ vt).permute(0, 3, 2, 1, 4).reshape(bf, n, c)
        return self.proj(out)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(0.0))


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, order: str) -> None:
        super().__init__()
        self.order = order
        hidden = int(dim * mlp_ratio)
        self.norm1_s = nn.LayerNorm(dim, eps=1e-6)
        self.norm1_t = nn.LayerNorm(dim, eps=1e-6)
        self.attn_s = Attention(dim, num_heads, "spatial")
        self.attn_t = Attention(dim, num_heads, "temporal")
        self.norm2_s = nn.LayerNorm(dim, eps=1e-6)
        self.norm2_t = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_s = _mlp(dim, hidden)
        self.mlp_t = _mlp(dim, hidden)

    def _spatial(self, x, seq_len):
        x = x + self.attn_s(self.norm1_s(x), seq_len)
        return x + self.mlp_s(self.norm2_s(x))

    def _temporal(self, x, seq_len):
        x = x + self.attn_t(self.norm1_t(x), seq_len)
        return x + self.mlp_t(self.norm2_t(x))

    def forward(self, x, seq_len: int):
        if self.order == "st":
            return self._temporal(self._spatial(x, seq_len), seq_len)
        return self._spatial(self._temporal(x, seq_len), seq_len)


class DSTFormer(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int = 3,
        feat_size: int = 512,
        depth: int = 5,
        num_heads: int = 8,
        mlp_ratio: float = 2,
        num_keypoints: int = 17,
        seq_len: int = 243,
    ) -> None:
        super().__init__()
        self.joints_embed = nn.Linear(in_channels, feat_size)
        self.blocks_st = nn.ModuleList(AttentionBlock(feat_size, num_heads, mlp_ratio, "st") for _ in range(depth))
        self.blocks_ts = nn.ModuleList(AttentionBlock(feat_size, num_heads, mlp_ratio, "ts") for _ in range(depth))
        self.norm = nn.LayerNorm(feat_size, eps=1e-6)
        self.temp_embed = nn.Parameter(torch.zeros(1, seq_len, 1, feat_size))
        self.spat_embed = nn.Parameter(torch.zeros(1, num_keypoints, feat_size))
        self.attn_regress = nn.ModuleList(nn.Linear(feat_size * 2, 2) for _ in range(depth))

    def forward(self, x):
        b, f, k, c = x.shape
        x = self.joints_embed(x.reshape(b * f, k, c)) + self.spat_embed
        d = x.shape[-1]
        x = (x.reshape(b, f, k, d) + self.temp_embed[:, :f]).reshape(b * f, k, d)
        for blk_st, blk_ts, fuse in zip(self.blocks_st, self.blocks_ts, self.attn_regress):
            x_st, x_ts = blk_st(x, f), blk_ts(x, f)
            alpha = fuse(torch.cat([x_st, x_ts], dim=-1)).softmax(dim=-1)
            x = x_st * alpha[:, :, 0:1] + x_ts * alpha[:, :, 1:2]
        return self.norm(x).reshape(b, f, k, d)


class MotionRegressionHead(nn.Module):
    def __init__(self, in_channels: int = 512, out_channels: int = 3, embedding_size: int = 512) -> None:
        super().__init__()
        self.pre_logits = nn.Sequential()
        self.pre_logits.add_module("fc", nn.Linear(in_channels, embedding_size))
        self.pre_logits.add_module("act", nn.Tanh())
        self.fc = nn.Linear(embedding_size, out_channels)

    def forward(self, x):
        return self.fc(self.pre_logits(x))


class MotionBERT(nn.Module):
    def __init__(self, *, feat_size: int = 512, depth: int = 5, num_heads: int = 8, mlp_ratio: float = 2,
                 seq_len: int = 243) -> None:
        super().__init__()
        self.max_frames = seq_len
        self.backbone = DSTFormer(feat_size=feat_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                  seq_len=seq_len)
        self.head = MotionRegressionHead(in_channels=feat_size, embedding_size=feat_size)

    def forward(self, keypoints):
        """keypoints: (B, T, K, 3) normalised (x, y, visibility) → (B, T, K, 3)."""
        return self.head(self.backbone(keypoints))
