"""VideoPose3D temporal convolution network (mmpose ``TCN`` + ``TemporalRegressionHead``).

The same weights run in two layouts (VideoPose3D's own trick):

* ``strided`` — one receptive-field window in, one frame out (mmpose's
  ``use_stride_conv=True`` inference path);
* ``dilated`` — a whole edge-padded sequence of T + R - 1 frames in, T frames out,
  so lifting a track costs one pass instead of T windows.

Both compute the same function; tests check them against each other and against mmpose.
"""

from __future__ import annotations

from torch import nn

from .common import ConvModule


class TemporalBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilation: int, dilated: bool) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilation = dilation if dilated else 1
        self.stride = 1 if dilated else kernel_size
        self.dilated = dilated
        self.conv1 = nn.Sequential(
            ConvModule(
                channels,
                channels,
                kernel_size,
                stride=self.stride,
                dilation=self.dilation,
                dims=1,
                act="relu",
            )
        )
        self.conv2 = nn.Sequential(ConvModule(channels, channels, 1, dims=1, act="relu"))

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        if self.dilated:
            pad = (self.kernel_size - 1) * self.dilation // 2
            res = x[:, :, pad : x.shape[2] - pad]
        else:
            res = x[:, :, self.kernel_size // 2 :: self.kernel_size]
        return out + res


class TCN(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int = 34,
        stem_channels: int = 1024,
        kernel_sizes=(3, 3, 3, 3, 3),
        dilated: bool = False,
    ) -> None:
        super().__init__()
        k0 = kernel_sizes[0]
        self.expand_conv = ConvModule(
            in_channels, stem_channels, k0, stride=1 if dilated else k0, dims=1, act="relu"
        )
        self.tcn_blocks = nn.ModuleList()
        dilation = k0
        for k in kernel_sizes[1:]:
            self.tcn_blocks.append(TemporalBlock(stem_channels, k, dilation, dilated))
            dilation *= k

    def forward(self, x):
        x = self.expand_conv(x)
        for block in self.tcn_blocks:
            x = block(x)
        return x


class TemporalRegressionHead(nn.Module):
    def __init__(self, in_channels: int = 1024, num_joints: int = 17) -> None:
        super().__init__()
        self.num_joints = num_joints
        self.conv = nn.Conv1d(in_channels, num_joints * 3, 1)

    def forward(self, x):
        return self.conv(x)


class VideoPose3D(nn.Module):
    def __init__(self, *, kernel_sizes=(3, 3, 3, 3, 3), num_joints: int = 17, dilated: bool = False) -> None:
        super().__init__()
        self.num_joints = num_joints
        self.receptive_field = 1
        for k in kernel_sizes:
            self.receptive_field *= k
        self.backbone = TCN(in_channels=2 * num_joints, kernel_sizes=kernel_sizes, dilated=dilated)
        self.head = TemporalRegressionHead(num_joints=num_joints)

    def forward(self, keypoints):
        """keypoints: (B, T, K, 2) normalised 2D → (B, T - R + 1, K, 3) root-relative 3D.

        In the strided layout T must equal the receptive field R (one output frame).
        """
        b, t, k, _ = keypoints.shape
        x = keypoints.permute(0, 2, 3, 1).reshape(b, k * 2, t)  # channels: k0x, k0y, k1x, ...
        y = self.head(self.backbone(x))  # (B, K*3, T')
        return y.reshape(b, k, 3, -1).permute(0, 3, 1, 2)

