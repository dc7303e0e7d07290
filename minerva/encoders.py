"""Observation encoders: the MLP trunks of vector observations and the CNN torsos of images
(Nature-DQN, IMPALA), with orthogonal initialisation throughout."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minerva.config import ENCODERS
from minerva.errors import first_line

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}


def orthogonal_linear(in_dim: int, out_dim: int, gain: float) -> nn.Linear:
    """A linear layer with orthogonal weights of ``gain`` and zero biases."""
    linear = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


def mlp(in_dim: int, layer_sizes: tuple[int, ...], activation: str
        ) -> tuple[nn.Sequential, int]:
    """Linear + activation layers (orthogonal init, gain sqrt 2); returns (net, out_dim)."""
    layers: list[nn.Module] = []
    for size in layer_sizes:
        linear = nn.Linear(in_dim, size)
        nn.init.orthogonal_(linear.weight, math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, ACTIVATIONS[activation]()]
        in_dim = size
    return nn.Sequential(*layers), in_dim


def is_image_space(space: gym.spaces.Space) -> bool:
    """Image observations: a uint8 ``Box`` of rank 3, channels first (``[C, H, W]``, as
    envpool's Atari gives them) or last (``[H, W, C]`` with at most 4 channels)."""
    return (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8
            and len(space.shape) == 3)


def resolve_encoder(encoder: str, observation_space: gym.spaces.Space) -> str:
    """``auto``: the Nature CNN for image observations (:func:`is_image_space`), else the MLP.

    Raises:
        ValueError: for an unknown encoder, or a CNN asked of observations that are not images.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    image = is_image_space(observation_space)
    if encoder == "auto":
        return "nature" if image else "mlp"
    if encoder != "mlp" and not image:
        raise ValueError(f"encoder {encoder!r} needs image observations (a uint8 Box of rank 3), "
                         f"got {observation_space}")
    return encoder


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1,
          padding: int = 0) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding)
    nn.init.orthogonal_(conv.weight, math.sqrt(2))
    nn.init.zeros_(conv.bias)
    return conv


class NatureCNN(nn.Module):
    """The torso of Mnih et al. (2015): conv 32x8x8/4, 64x4x4/2, 64x3x3/1, then a 512-unit
    linear layer, ReLU throughout."""

    def __init__(self, channels: int, height: int, width: int, features: int = 512):
        super().__init__()
        self.convs = nn.Sequential(
            _conv(channels, 32, 8, 4), nn.ReLU(), _conv(32, 64, 4, 2), nn.ReLU(),
            _conv(64, 64, 3, 1), nn.ReLU(), nn.Flatten())
        self.linear = orthogonal_linear(
            _flat_size(self.convs, channels, height, width, "nature"), features, math.sqrt(2))
        self.out_dim = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(self.convs(images)))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = _conv(channels, channels, 3, padding=1)
        self.conv1 = _conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaCNN(nn.Module):
    """The residual torso of Espeholt et al. (2018): three stages of conv 3x3, max-pool
    3x3/2 and two residual blocks (16, 32 and 32 channels), then a 256-unit linear layer."""

    def __init__(self, channels: int, height: int, width: int, features: int = 256,
                 stage_channels: tuple[int, ...] = (16, 32, 32)):
        super().__init__()
        in_channels = channels
        layers: list[nn.Module] = []
        for out_channels in stage_channels:
            layers += [_conv(channels, out_channels, 3, padding=1),
                       nn.MaxPool2d(3, stride=2, padding=1),
                       _ResidualBlock(out_channels), _ResidualBlock(out_channels)]
            channels = out_channels
        self.convs = nn.Sequential(*layers, nn.ReLU(), nn.Flatten())
        self.linear = orthogonal_linear(
            _flat_size(self.convs, in_channels, height, width, "impala"), features, math.sqrt(2))
        self.out_dim = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(self.convs(images)))


def _flat_size(convs: nn.Module, channels: int, height: int, width: int, name: str) -> int:
    """The size of ``convs``' output for one ``[channels, height, width]`` image."""
    try:
        with torch.no_grad():
            return int(convs(torch.zeros(1, channels, height, width)).shape[1])
    except RuntimeError as error:
        raise ValueError(f"images of {channels}x{height}x{width} are too small for the {name} "
                         f"encoder ({first_line(error)}); use --encoder impala or mlp, or larger "
                         "images") from None


class ImageEncoder(nn.Module):
    """uint8 images to features: scaled to [0, 1] by the space's bounds on the networks'
    device (the rollout keeps them uint8), moved channels-first, and through a CNN."""

    def __init__(self, space: gym.spaces.Box, encoder: str):
        super().__init__()
        shape = tuple(space.shape)
        # [H, W, C] when the last axis looks like channels and the first does not
        self.channels_last = shape[-1] <= 4 < shape[0]
        channels, height, width = ((shape[2], shape[0], shape[1]) if self.channels_last
                                   else shape)
        low = float(np.min(space.low))
        span = max(float(np.max(space.high)) - low, 1.0)
        self.register_buffer("low", torch.tensor(low), persistent=False)
        self.register_buffer("inverse_span", torch.tensor(1.0 / span), persistent=False)
        cnn = {"nature": NatureCNN, "impala": ImpalaCNN}[encoder]
        self.cnn = cnn(channels, height, width)
        self.out_dim = self.cnn.out_dim

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        images = (observations.float() - self.low) * self.inverse_span
        if self.channels_last:
            images = images.permute(0, 3, 1, 2)
        return self.cnn(images)
