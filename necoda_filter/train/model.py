"""Spatiotemporal hourglass encoder/decoder with per-quality gains and a factorized Laplace prior.

Input per patch (N, 2, T, H, W): channel 0 = dynamics ``d = vst(x) - baseline`` (noise units),
channel 1 = the decoded baseline image (broadcast over T, scaled by 0.2). T % 8 == 0, H % 16 == W % 16 == 0.

* stem: (2, 4, 4) patchify conv -> (T/2, H/4, W/4)
* spatial pathway (shrinks time):  latent ``zs`` at (T/8, H/4, W/4),  CS channels
* temporal pathway (shrinks space): latent ``zt`` at (T/2, H/16, W/16), CT channels
* decoder: both pathways brought back to (T/2, H/4, W/4), fused with features of the baseline image
  (additively and as a multiplicative gate: activity modulates the footprints visible in the mean image),
  then a (2, 4, 4) transposed conv to full resolution.

Quantization: ``q = round(y * gain[quality, c])``; the decoder sees ``q / gain``. Rate is estimated with
a zero-mean Laplace per (quality, channel) on q (training only; the codec entropy-codes the integers
with forward-adaptive pcodec blocks, so no float model output ever drives the entropy coder).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

T_STRIDE = 8
S_STRIDE = 16


def act():
    return nn.LeakyReLU(0.1)


class Encoder(nn.Module):
    def __init__(self, width=24, cs=8, ct=8):
        super().__init__()
        w = width
        self.stem_d = nn.Conv3d(1, w, (2, 4, 4), (2, 4, 4))
        self.stem_b = nn.Conv3d(1, w, (1, 4, 4), (1, 4, 4))  # baseline image, broadcast over time
        self.stem = nn.Sequential(act(), nn.Conv3d(w, w, (1, 3, 3), padding=(0, 1, 1)), act())
        # spatial pathway: shrink time by 4 more (total 8), keep H/4
        self.sp = nn.Sequential(nn.Conv3d(w, 32, (2, 1, 1), (2, 1, 1)), act(),
                                nn.Conv3d(32, cs, (4, 3, 3), (2, 1, 1), padding=(1, 1, 1)))
        # temporal pathway: shrink space by 4 more (total 16), keep T/2
        self.tp = nn.Sequential(nn.Conv3d(w, 32, (1, 4, 4), (1, 2, 2), padding=(0, 1, 1)), act(),
                                nn.Conv3d(32, ct, (3, 4, 4), (1, 2, 2), padding=(1, 1, 1)))

    def forward(self, d, base):
        # d: (N, 1, T, H, W) dynamics; base: (N, 1, 1, H, W) scaled baseline image
        h = self.stem(self.stem_d(d) + self.stem_b(base))
        return self.sp(h), self.tp(h)


class Decoder(nn.Module):
    """Latent-rate work in 3-D; the full-rate trunk runs as 2-D convs over (N*T/2) frames so every
    upsampling is a DepthToSpace or a plain reshape (no 8-D transposes, fast in ONNX Runtime)."""

    def __init__(self, width=24, cs=8, ct=8):
        super().__init__()
        w = width
        self.w = w
        self.sp = nn.Sequential(nn.Conv3d(cs, w, 3, padding=1), act())
        self.sp_up = nn.Conv2d(w, 4 * w, 1)           # x4 in time via channels -> reshape
        self.tp = nn.Sequential(nn.Conv3d(ct, 32, 3, padding=1), act(), nn.Conv3d(32, 32, 3, padding=1), act())
        self.tp_up = nn.Conv2d(32, 16 * w, 1)         # x4 in space via DepthToSpace
        self.bp = nn.Sequential(nn.Conv2d(1, w, 4, 4), act(), nn.Conv2d(w, 2 * w, 1))
        self.mix = nn.Sequential(act(), nn.Conv2d(w, w, 3, padding=1), act())
        self.out = nn.Conv2d(w, 32, 1)                # (2 frames x 4 x 4) per low-res voxel

    def forward(self, zs, zt, base, packed: bool = False):
        """Decoded dynamics (N, 1, T, H, W); with ``packed`` the last conv's output (N*T/2, 32, H/4, W/4)
        before the final pixel shuffle (the codec's C kernel unpacks it, fused with the inverse VST)."""
        # zs: (N, CS, T/8, H/4, W/4); zt: (N, CT, T/2, H/16, W/16); base: (N, 1, 1, H, W)
        n, _, t8, h4, w4 = zs.shape
        t2 = t8 * 4
        w = self.w
        s = self.sp(zs).transpose(1, 2).reshape(n * t8, w, h4, w4)
        s = self.sp_up(s).reshape(n * t2, w, h4, w4)
        t = self.tp(zt)
        t = t.transpose(1, 2).reshape(n * t2, 32, zt.shape[3], zt.shape[4])
        t = F.pixel_shuffle(self.tp_up(t), 4)           # (n*t2, w, h4, w4)
        b = self.bp(base[:, :, 0])                      # (n, 2w, h4, w4)
        b = b.reshape(n, 1, 2 * w, h4, w4)
        t5 = t.reshape(n, t2, w, h4, w4)
        h = s.reshape(n, t2, w, h4, w4) + t5 + b[:, :, :w] + t5 * b[:, :, w:]
        h = self.mix(h.reshape(n * t2, w, h4, w4))
        o = self.out(h)                                 # (n*t2, 2*4*4, h4, w4)
        if packed:
            return o
        o = F.pixel_shuffle(o, 4)                       # (n*t2, 2, H, W)
        return o.reshape(n, 1, t2 * 2, h4 * 4, w4 * 4)


class Codec(nn.Module):
    def __init__(self, width=24, cs=8, ct=8, n_quality=4):
        super().__init__()
        self.cfg = dict(width=width, cs=cs, ct=ct, n_quality=n_quality)
        self.enc = Encoder(width, cs, ct)
        self.dec = Decoder(width, cs, ct)
        # log gains (step sizes) and log Laplace scales per quality and channel; quality 0 = coarsest
        init = torch.linspace(math.log(0.5), math.log(4.0), n_quality)
        self.log_gain_s = nn.Parameter(init[:, None].repeat(1, cs).clone())
        self.log_gain_t = nn.Parameter(init[:, None].repeat(1, ct).clone())
        self.log_scale_s = nn.Parameter(torch.full((n_quality, cs), -1.5))
        self.log_scale_t = nn.Parameter(torch.full((n_quality, ct), -1.5))

    @staticmethod
    def _laplace_bits(q, log_scale):
        b = log_scale.exp().clamp_min(0.05)[:, :, None, None, None]
        a = q.abs()
        tail = 0.5 * (torch.exp(-(a - 0.5).clamp_min(0) / b) - torch.exp(-(a + 0.5) / b))
        centre = 1 - 0.5 * torch.exp(-(0.5 - q).clamp_min(0) / b) - 0.5 * torch.exp(-(0.5 + q).clamp_min(0) / b)
        p = torch.where(a >= 0.5, tail, centre).clamp_min(1e-9)
        return -torch.log2(p)

    def quantize(self, y, log_gain, qi, training):
        g = log_gain[qi].exp()[:, :, None, None, None]
        v = y * g
        if training:
            noisy = v + torch.empty_like(v).uniform_(-0.5, 0.5)
            hard = v + (torch.round(v) - v).detach()  # straight-through for the decoder
            return noisy, hard / g
        q = torch.round(v)
        return q, q / g

    def forward(self, x, qi, training=True):
        ys, yt = self.enc(x[:, :1], x[:, 1:2, :1])
        qs, zs = self.quantize(ys, self.log_gain_s, qi, training)
        qt, zt = self.quantize(yt, self.log_gain_t, qi, training)
        base = x[:, 1:2, :1]
        out = self.dec(zs, zt, base)
        bits = (self._laplace_bits(qs, self.log_scale_s[qi]).sum(dim=(1, 2, 3, 4))
                + self._laplace_bits(qt, self.log_scale_t[qi]).sum(dim=(1, 2, 3, 4)))
        return out, bits, (qs, qt)
