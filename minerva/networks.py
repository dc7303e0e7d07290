"""The agent every algorithm trains: observation encoder, policy (Gaussian or categorical) and
value networks.

Continuous actions use a diagonal Gaussian over pre-squash actions ``u``, which a fixed map per
dimension takes into the action space's bounds:

- bounded on both sides: ``center + half_width * tanh(u)``, which is
  ``low + (tanh(u) + 1) / 2 * (high - low)``; center and half-width are computed in float64,
  so ``high - low`` cannot overflow float32;
- bounded below only: ``low + softplus(u)``; above only: ``high - softplus(-u)`` (softplus
  grows linearly, so finite ``u`` stays finite, where ``exp`` would overflow);
- unbounded: ``u`` itself.

A bound that is infinite or at least float32's largest value (gymnasium's stand-in for
"unbounded") counts as absent. The result is clamped to the bounds (to float32's range on an
unbounded side) so that float rounding never leaves them. Finite bounds beyond ``±1e6`` draw a
warning at construction: float32 actions squashed at that scale jump between the extremes
(tanh) or lose their precision.

With ``action_bounds="clip"`` (CleanRL's and SB3's PPO) the map is instead ``u`` clipped to the
bounds: every ``u`` beyond a bound is the same action there.

Log-probabilities and KLs are those of ``u``: each squashing map is a bijection, so the KL is
unchanged, and its Jacobian does not depend on the policy's parameters, so the weighted
likelihood's gradient is unchanged too. Discrete actions use a categorical over logits. The
behaviour distribution's parameters (``dist_params``) are ``[mean, log_std]`` or the logits.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minerva.encoders import ImageEncoder, mlp, orthogonal_linear, resolve_encoder
from minerva.normalization import RunningMeanStd

LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0  # the default bounds of a Gaussian policy's log-std
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Bounds at or beyond float32's largest value are gymnasium's spelling of "unbounded"
# (Box(-np.finfo(np.float32).max, ...)); squashing into them would overflow float32.
_UNBOUNDED = float(np.finfo(np.float32).max)
# Finite bounds beyond this are almost surely stand-ins for "unbounded" (see the docstring).
_ABSURD_BOUND = 1e6


class Action(NamedTuple):
    raw: torch.Tensor  # what the storage keeps: pre-squash u, or the action index
    log_prob: torch.Tensor  # [B], of raw
    dist_params: torch.Tensor  # [B, P]
    value: torch.Tensor | None  # [B]; None when acting without the value network


class GaussianPolicy(nn.Module):
    """A diagonal Gaussian with a bounded log-std (a head of the features, state-dependent,
    the default; or one learned vector shared by all states), squashed into the action
    bounds (``action_bounds="squash"``) or clipped to them (``"clip"``)."""

    def __init__(self, in_dim: int, space: gym.spaces.Box, init_log_std: float = 0.0,
                 state_dependent_std: bool = True, min_log_std: float = LOG_STD_MIN,
                 action_bounds: str = "squash", std_parameterization: str = "bounded"):
        super().__init__()
        if action_bounds not in ("squash", "clip"):
            raise ValueError(f"action_bounds must be squash or clip, got {action_bounds!r}")
        if std_parameterization not in ("bounded", "softplus"):
            raise ValueError("std_parameterization must be bounded or softplus, got "
                             f"{std_parameterization!r}")
        self.clip_actions = action_bounds == "clip"
        if not min_log_std < init_log_std < LOG_STD_MAX:
            raise ValueError(f"init_log_std must lie between min_log_std ({min_log_std}) and "
                             f"{LOG_STD_MAX}, got {init_log_std}")
        self.min_log_std = min_log_std
        self.softplus_std = std_parameterization == "softplus"
        self.action_dim = int(np.prod(space.shape))
        self.action_shape = space.shape
        self.mean = orthogonal_linear(in_dim, self.action_dim, 0.01)
        if self.softplus_std:
            # std = softplus(z) + exp(MIN): start z where std = exp(init_log_std)
            excess = math.exp(init_log_std) - math.exp(min_log_std)
            logit = excess + math.log(-math.expm1(-excess))  # softplus's inverse
        else:
            # log_std = MIN + (MAX - MIN) * sigmoid(z): start z where log_std = init_log_std
            fraction = (init_log_std - min_log_std) / (LOG_STD_MAX - min_log_std)
            logit = math.log(fraction / (1 - fraction))
        self.state_dependent_std = state_dependent_std
        if state_dependent_std:
            self.log_std = orthogonal_linear(in_dim, self.action_dim, 0.01)
            nn.init.constant_(self.log_std.bias, logit)
        else:
            self.log_std_logit = nn.Parameter(torch.full((self.action_dim,), logit))
        self._register_squash(space)

    def _register_squash(self, space: gym.spaces.Box) -> None:
        """The buffers of :meth:`to_env`'s per-dimension map (see the module docstring)."""
        low = np.asarray(space.low, np.float64).reshape(-1)
        high = np.asarray(space.high, np.float64).reshape(-1)
        # the space's bounds as they were always stored, so checkpoints keep their keys
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))
        empty = (low >= _UNBOUNDED) | (high <= -_UNBOUNDED)
        if empty.any():
            raise ValueError(f"Box action space of shape {space.shape} has no finite action at "
                             f"{_dimensions(space.shape, low, high, empty)}")
        has_low, has_high = low > -_UNBOUNDED, high < _UNBOUNDED
        absurd = (has_low & (np.abs(low) > _ABSURD_BOUND)) | (
            has_high & (np.abs(high) > _ABSURD_BOUND))
        if absurd.any() and not self.clip_actions:  # (clipped actions keep their precision)
            warnings.warn(
                f"Box action space of shape {space.shape}: bounds beyond ±{_ABSURD_BOUND:g} at "
                f"{_dimensions(space.shape, low, high, absurd)}: the policy's float32 actions "
                "are squashed into them (tanh between two bounds, softplus from one), so at "
                "this scale they jump between the extremes or lose their precision. Rescale "
                "the actions (e.g. gymnasium.wrappers.RescaleAction), or make a side that is "
                "meant to be unbounded infinite.", UserWarning, stacklevel=3)
        two_sided = has_low & has_high
        self.bounded = bool(two_sided.all())
        self._identity = not (has_low | has_high).any()
        # zero for an absent bound: then low + high is the one bound of a one-sided dimension
        # and 0 for an unbounded one (and no inf - inf). Both are below float32's largest
        # value in magnitude, so none of these rounds to inf in float32.
        low, high = np.where(has_low, low, 0.0), np.where(has_high, high, 0.0)
        buffers = {
            "offset": np.where(two_sided, (low + high) / 2, low + high),
            "scale": np.where(two_sided, (high - low) / 2, 1.0),
            "sign": np.where(has_high & ~has_low, -1.0, 1.0),  # -1: high - softplus(-u)
            "clip_low": np.where(has_low, low, -_UNBOUNDED),
            "clip_high": np.where(has_high, high, _UNBOUNDED),
        }
        for name, value in buffers.items():
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32),
                                 persistent=False)
        self.register_buffer("two_sided", torch.as_tensor(two_sided), persistent=False)
        self.register_buffer("one_sided", torch.as_tensor(has_low ^ has_high), persistent=False)

    @property
    def params_dim(self) -> int:
        return 2 * self.action_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logit = (self.log_std(features) if self.state_dependent_std
                 else self.log_std_logit.expand(features.shape[0], -1))
        if self.softplus_std:
            log_std = torch.log(F.softplus(logit) + math.exp(self.min_log_std))
        else:
            log_std = self.min_log_std + (LOG_STD_MAX - self.min_log_std) * torch.sigmoid(logit)
        return torch.cat([self.mean(features), log_std], dim=-1)

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = params.split(self.action_dim, dim=-1)
        return mean, log_std.exp()

    def sample(self, params: torch.Tensor, deterministic: bool) -> torch.Tensor:
        mean, std = self.split(params)
        return mean if deterministic else mean + std * torch.randn_like(mean)

    def log_prob(self, params: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        # log N(u; mean, std) written out: torch.distributions.Normal validates its arguments
        # on every construction, which costs more than the network in a rollout step
        mean, log_std = params.split(self.action_dim, dim=-1)
        z = (raw - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(-1)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        r"""The Gaussian's entropy per sample (of ``u``, before the map into the bounds).

        .. math:: H = \sum_d \big(\log \sigma_d + \tfrac12 + \tfrac12 \log 2\pi\big)
        """
        _, log_std = params.split(self.action_dim, dim=-1)
        return (log_std + 0.5 + _HALF_LOG_2PI).sum(-1)

    def to_env(self, raw: torch.Tensor) -> torch.Tensor:
        """Pre-squash actions ``[B, D]`` as the environment's ``[B, *shape]`` actions."""
        if self._identity:
            return raw.reshape(-1, *self.action_shape)
        if self.clip_actions:
            return raw.clamp(self.clip_low, self.clip_high).reshape(-1, *self.action_shape)
        squashed = torch.tanh(raw)
        if not self.bounded:
            one_sided = self.sign * F.softplus(self.sign * raw)
            squashed = torch.where(self.two_sided, squashed,
                                   torch.where(self.one_sided, one_sided, raw))
        action = torch.addcmul(self.offset, self.scale, squashed)
        # float rounding must not leave the bounds, nor a huge u overflow an unbounded side
        return action.clamp_(self.clip_low, self.clip_high).reshape(-1, *self.action_shape)


def _dimensions(shape: tuple[int, ...], low: np.ndarray, high: np.ndarray,
                mask: np.ndarray, limit: int = 4) -> str:
    """``"dimension 0 [-1e+30, 1e+30], ..."`` for the flat indices in ``mask``."""
    flat = np.flatnonzero(mask)
    index = [tuple(map(int, np.unravel_index(i, shape))) if len(shape) > 1 else int(i)
             for i in flat[:limit]]
    named = [f"dimension {j} [{low[i]:g}, {high[i]:g}]" for i, j in zip(flat, index)]
    more = f" and {flat.size - limit} more" if flat.size > limit else ""
    return ", ".join(named) + more


class CategoricalPolicy(nn.Module):
    """A categorical over ``n`` actions, parameterised by logits."""

    def __init__(self, in_dim: int, space: gym.spaces.Discrete):
        super().__init__()
        self.num_actions = int(space.n)
        self.start = int(space.start)
        self.logits = orthogonal_linear(in_dim, self.num_actions, 0.01)

    @property
    def params_dim(self) -> int:
        return self.num_actions

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features)

    def sample(self, params: torch.Tensor, deterministic: bool) -> torch.Tensor:
        if deterministic:
            return params.argmax(-1)
        return torch.multinomial(torch.softmax(params, -1), 1).squeeze(-1)

    def log_prob(self, params: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(params, -1).gather(-1, raw.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        r""":math:`H = -\sum_a p_a \log p_a` per sample."""
        log_p = torch.log_softmax(params, -1)
        return -(log_p.exp() * log_p).sum(-1)

    def to_env(self, raw: torch.Tensor) -> torch.Tensor:
        return raw + self.start


class Agent(nn.Module):
    """Observation encoder, policy and value function.

    The encoder (``encoder``, :func:`resolve_encoder`) is the observation normaliser for
    vector observations (``mlp``), or a CNN shared by the policy and the value function for
    images (``nature``, ``impala``: :class:`ImageEncoder`; images are scaled, not
    normalised). With ``shared_encoder`` the policy's hidden layers (``policy_layer_sizes``)
    also feed the value head (through ``value_layer_sizes``); otherwise the two are separate
    MLPs on the encoder's output.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Space,
        policy_layer_sizes: tuple[int, ...],
        value_layer_sizes: tuple[int, ...],
        shared_encoder: bool = False,
        activation: str = "tanh",
        normalize_observations: bool = True,
        init_log_std: float = 0.0,
        state_dependent_std: bool = True,
        min_log_std: float = LOG_STD_MIN,
        encoder: str = "auto",
        action_bounds: str = "squash",
        std_parameterization: str = "bounded",
    ):
        super().__init__()
        self.encoder_type = resolve_encoder(encoder, observation_space)
        self.observation_shape = tuple(observation_space.shape)
        self.image_encoder = (ImageEncoder(observation_space, self.encoder_type)
                              if self.encoder_type != "mlp" else None)
        # images are scaled by their bounds instead
        self.normalize_observations = normalize_observations and self.image_encoder is None
        self.obs_normalizer = RunningMeanStd(
            self.observation_shape if self.image_encoder is None else ())
        in_dim = (self.image_encoder.out_dim if self.image_encoder is not None
                  else int(np.prod(observation_space.shape)))
        self.policy_trunk, policy_out = mlp(in_dim, policy_layer_sizes, activation)
        self.shared_encoder = shared_encoder
        value_in = policy_out if shared_encoder else in_dim
        self.value_trunk, value_out = mlp(value_in, value_layer_sizes, activation)
        self.value_head = orthogonal_linear(value_out, 1, 1.0)
        if isinstance(action_space, gym.spaces.Box):
            self.policy: GaussianPolicy | CategoricalPolicy = GaussianPolicy(
                policy_out, action_space, init_log_std, state_dependent_std, min_log_std,
                action_bounds, std_parameterization)
        elif isinstance(action_space, gym.spaces.Discrete):
            self.policy = CategoricalPolicy(policy_out, action_space)
        else:
            raise ValueError(
                f"unsupported action space {action_space}: minerva handles Box (continuous) "
                "and Discrete actions"
            )

    @property
    def discrete(self) -> bool:
        return isinstance(self.policy, CategoricalPolicy)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters both the policy and the value function read (the CNN's)."""
        return [] if self.image_encoder is None else list(self.image_encoder.parameters())

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(dist_params [B, P], values [B])``."""
        x = self._inputs(observations)
        features = self.policy_trunk(x)
        value_features = self.value_trunk(features if self.shared_encoder else x)
        return self.policy(features), self.value_head(value_features).squeeze(-1)

    def act(self, observations: torch.Tensor, deterministic: bool = False,
            with_value: bool = True) -> Action:
        """Samples an action (the mean or argmax if ``deterministic``). Without
        ``with_value`` only the policy runs and ``Action.value`` is None: a collector that
        scores the whole rollout's observations afterwards in one batch saves the value
        network's per-step cost."""
        if with_value:
            params, values = self(observations)
        else:
            params, values = self.policy_params(observations), None
        raw = self.policy.sample(params, deterministic)
        return Action(raw, self.policy.log_prob(params, raw), params, values)

    def policy_params(self, observations: torch.Tensor) -> torch.Tensor:
        """The policy's ``dist_params [B, P]`` alone."""
        return self.policy(self.policy_trunk(self._inputs(observations)))

    def value(self, observations: torch.Tensor) -> torch.Tensor:
        if self.shared_encoder:
            return self(observations)[1]
        return self.value_head(self.value_trunk(self._inputs(observations))).squeeze(-1)

    def _inputs(self, observations: torch.Tensor) -> torch.Tensor:
        """``[B, features]`` float32: the CNN's features of images, or the flattened
        observations, normalised when ``normalize_observations``."""
        if self.image_encoder is not None:
            return self.image_encoder(observations)
        x = observations.flatten(1).float()
        if self.normalize_observations:
            x = self.obs_normalizer.normalize(x.reshape(-1, *self.observation_shape)).flatten(1)
        return x


# the seed API's name of the agent
VMPOAgent = Agent


def precision_context(precision: str,
                      device: torch.device) -> contextlib.AbstractContextManager:
    """Where the networks run in ``precision`` (the option): bfloat16 autocast on
    ``device``, or float32 as they are."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def agent_for(config, observation_space: gym.spaces.Space,
              action_space: gym.spaces.Space) -> Agent:
    """A freshly initialised agent of ``config``'s (a :class:`~minerva.config.TrainConfig`)
    networks for these spaces (a vector env's single-env spaces)."""
    return Agent(
        observation_space, action_space, config.policy_layer_sizes, config.value_layer_sizes,
        shared_encoder=config.shared_encoder, activation=config.activation,
        normalize_observations=config.normalize_observations,
        init_log_std=config.init_log_std, state_dependent_std=config.state_dependent_std,
        min_log_std=config.min_log_std, encoder=config.encoder,
        action_bounds=config.action_bounds, std_parameterization=config.std_parameterization)
