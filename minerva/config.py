"""The one typed configuration of a training run; the CLI (``python -m minerva.train``) is
generated from it, and :class:`~minerva.trainers.vmpo.trainer.VMPOTrainer` validates its
arguments through it."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from minerva.errors import OptionError

if TYPE_CHECKING:
    import torch

ESTIMATORS = ("returns", "dae", "gae")
BACKENDS = ("auto", "envpool", "gymnasium")
ACTIVATIONS = ("tanh", "relu", "elu", "silu")
ADAPTIVE_LR_SCHEDULES = ("adaptive", "adaptive_annealed")  # V-MPO's, from its KL bound
LR_SCHEDULES = ("constant", "linear", *ADAPTIVE_LR_SCHEDULES)
PRECISIONS = ("float32", "bfloat16")
ENCODERS = ("auto", "mlp", "nature", "impala")
ALGORITHMS = ("vmpo", "ppo")
ACTION_BOUNDS = ("squash", "clip")
STD_PARAMETERIZATIONS = ("bounded", "softplus")
MAX_SEED = 2_000_000_000  # envpool seeds are int32, and env i gets seed + i
MAX_ENVS = 65_536
MAX_M_STEPS = 1_000
# V-MPO's temperature and KL multipliers: where they start, and where they are kept
DUAL_RANGE = (1e-8, 1e4)


def _option(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    # --- run -------------------------------------------------------------------------------
    algo: str = _option(
        "vmpo", "algorithm: vmpo (V-MPO) or ppo (PPO, clipped surrogate); each has its own "
                "presets in presets.toml, and the options below marked V-MPO or PPO are its "
                "alone", choices=ALGORITHMS)
    env_id: str = _option("CartPole-v1", "environment id (gymnasium or envpool)")
    seed: int = _option(1, "random seed (env i is seeded with seed + i)")
    total_steps: int = _option(200_000, "environment steps to train for")
    out_dir: str = _option("runs", "output folder (metrics.jsonl, TensorBoard, checkpoints)")
    overwrite: bool = _option(
        False, "a fresh run into an out_dir that holds a run deletes that run's files (without "
               "it, such a run is refused)")
    checkpoint_every_s: float = _option(
        300.0, "write <algo>_last.pt at least this often, in wall-clock seconds, besides at every "
               "evaluation (0: only at evaluations)")
    device: str = _option("cpu", "torch device for the networks and the update, e.g. cpu, cuda")
    backend: str = _option("auto", "environment backend; auto = envpool when it has the id",
                           choices=BACKENDS)
    num_envs: int = _option(8, "environments stepped together")
    rollout_steps: int = _option(64, "steps per environment in each rollout")
    torch_threads: int = _option(
        0, "torch intra-op threads, at most the machine's CPUs (0: torch's default)")
    # --- V-MPO (and the advantages both use) ------------------------------------------------
    advantage_estimator: str = _option("gae", "advantage estimator", choices=ESTIMATORS)
    gamma: float = _option(0.99, "discount factor")
    gae_lambda: float = _option(0.95, "lambda of the gae estimator")
    normalize_advantages: bool = _option(
        True, "standardise advantages over valid samples (V-MPO: over the rollout, before the "
              "top-k; PPO: per minibatch)")
    topk_fraction: float = _option(0.5, "V-MPO: fraction of the valid samples the E-step keeps")
    temperature_init: float = _option(1.0, "V-MPO: initial temperature eta")
    epsilon_eta: float = _option(0.1, "V-MPO: temperature (E-step) KL bound")
    epsilon_mu: float = _option(0.01, "V-MPO: KL bound on the Gaussian mean")
    epsilon_sigma: float = _option(0.01, "V-MPO: KL bound on the Gaussian standard deviation")
    epsilon_categorical: float = _option(0.01, "V-MPO: KL bound of a categorical policy")
    alpha_init: float = _option(1.0, "V-MPO: initial KL Lagrange multipliers")
    dual_max_grad_norm: float = _option(
        0.0, "V-MPO: gradient clipping norm of the temperature and the KL multipliers together "
             "(0: not clipped)")
    target_update_period: int = _option(
        0, "V-MPO: anchor the KL bounds on a target policy copied from the policy every this "
           "many gradient steps (0: on the rollout's behaviour policy)")
    # --- PPO -------------------------------------------------------------------------------
    clip_coef: float = _option(
        0.2, "PPO: the surrogate's ratio is clipped to [1 - clip_coef, 1 + clip_coef] (and the "
             "value's change to +-clip_coef with clip_value_loss)")
    clip_value_loss: bool = _option(
        True, "PPO: clip the critic's change per update around the rollout's values")
    entropy_coef: float = _option(0.0, "PPO: weight of the entropy bonus")
    value_coef: float = _option(0.5, "PPO: weight of the value loss")
    m_steps: int = _option(
        8, "passes (epochs) over each rollout; each pass is num_minibatches gradient steps")
    num_minibatches: int = _option(
        1, "minibatches each pass splits the rollout into (1: full-batch steps); top-k and the "
           "E-step's weights are the whole rollout's")
    # --- networks and optimisation ---------------------------------------------------------
    policy_layer_sizes: tuple[int, ...] = _option((64, 64), "policy hidden layer sizes")
    value_layer_sizes: tuple[int, ...] = _option((64, 64), "value hidden layer sizes")
    activation: str = _option("tanh", "hidden activation", choices=ACTIVATIONS)
    encoder: str = _option(
        "auto", "observation encoder: auto = the nature CNN for image observations (a uint8 Box "
                "of rank 3, kept uint8 in the rollout and scaled to [0, 1] on the device), mlp "
                "otherwise; impala = the IMPALA ResNet", choices=ENCODERS)
    shared_encoder: bool = _option(False, "the value head reads the policy's hidden layers")
    init_log_std: float = _option(0.0, "initial log-std of a Gaussian policy")
    min_log_std: float = _option(
        -5.0, "lower bound of a Gaussian policy's log-std (a floor on its exploration)")
    std_parameterization: str = _option(
        "bounded", "a Gaussian policy's std: exp of a log-std squashed between min_log_std and 1 "
                   "(bounded) or softplus(p) + exp(min_log_std) (softplus, as Acme; no upper "
                   "bound)", choices=STD_PARAMETERIZATIONS)
    state_dependent_std: bool = _option(
        True, "a Gaussian policy's std depends on the state (else one vector for all states)")
    action_bounds: str = _option(
        "squash", "how a Gaussian policy's actions meet a bounded Box: squash (tanh into the "
                  "bounds, softplus for one bound) or clip (the Gaussian's sample clipped to the "
                  "bounds, as CleanRL and SB3 do)", choices=ACTION_BOUNDS)
    policy_lr: float = _option(5e-4, "policy learning rate")
    value_lr: float = _option(1e-3, "value function learning rate")
    temperature_lr: float = _option(
        1e-2, "V-MPO: temperature (eta) learning rate, on its parameter p (log: each gradient "
              "step, m_steps x num_minibatches per rollout, changes eta by a factor of about "
              "exp(lr))")
    alpha_lr: float = _option(
        1e-2, "V-MPO: KL multipliers (alpha) learning rate, on their parameters p, likewise per "
              "gradient step")
    max_grad_norm: float = _option(
        10.0, "gradient clipping norm (V-MPO: of the policy and the value network separately; "
              "PPO: of both together, as CleanRL)")
    lr_schedule: str = _option(
        "constant", "learning rate schedule: constant; linear (to 0 at total_steps: V-MPO's "
        "policy rate, PPO's policy and value rates); adaptive (V-MPO only: the policy's rate "
        "x1.5 while its KL after an update is under half its bound, /1.5 while over twice it; "
        "between 1e-5 and 10 x policy_lr); adaptive_annealed (V-MPO only: adaptive, with its "
        "upper bound annealed linearly from 10 x policy_lr to 1e-5 at total_steps)",
        choices=LR_SCHEDULES)
    precision: str = _option(
        "float32", "the networks' precision in the update: bfloat16 runs their layers under "
                   "autocast (log-probs, KLs, losses and duals stay float32)",
        choices=PRECISIONS)
    compile_update: bool = _option(
        False, "torch.compile the update's losses, forward and backward (the compile time is "
               "logged as time/compile_s; if compiling fails the update runs eagerly)")
    # --- normalisation ---------------------------------------------------------------------
    normalize_observations: bool = _option(
        True, "running mean/std observation normalisation (not of images, which are scaled)")
    normalize_rewards: bool = _option(True, "scale rewards by the running return std")
    # --- evaluation and logging ------------------------------------------------------------
    eval_every: int = _option(10_000, "evaluate every this many environment steps")
    eval_episodes: int = _option(10, "evaluation episodes (one per evaluation env)")
    dist_timeout_s: float = _option(
        600.0, "distributed training (torchrun): seconds a rank waits for the others in a "
               "collective before failing with an error (rank 0 evaluates while they wait)")
    eval_max_steps: int = _option(
        100_000, "evaluation episodes still running after this many steps are cut there (an "
                 "env without a time limit would never end them)")
    target_return: float | None = _option(
        None, "stop once the evaluation return mean reaches this (none: never)")
    progress: bool = _option(True, "show a progress bar")
    capture_video: bool = _option(
        False, "at the end of training, record one episode of the best policy (<algo>_best.pt) "
               "to <out_dir>/videos/best.mp4 with gymnasium's renderer (pip install "
               "'minerva[video]')")
    wandb_project: str = _option(
        "", "also log to Weights & Biases under this project: the same scalars as TensorBoard "
            "and the run's config (pip install 'minerva[wandb]'; WANDB_MODE=offline needs no "
            "account; empty: off)")

    def validate(self) -> "TrainConfig":
        """Raises OptionError naming the first bad option; returns self."""
        def bad(name: str, why: str) -> None:
            raise OptionError(name, f"{why}, got {getattr(self, name)!r}")

        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                bad(f.name, f"must be one of {', '.join(choices)}")
        for name in ("total_steps", "num_envs", "rollout_steps", "m_steps", "num_minibatches",
                     "eval_every", "eval_episodes", "eval_max_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be a positive integer")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            bad("seed", f"must be an integer in [0, {MAX_SEED:_}] (env i is seeded with "
                "seed + i, and envpool's seeds are 32-bit)")
        for name in ("num_envs", "eval_episodes"):
            if getattr(self, name) > MAX_ENVS:
                bad(name, f"must be at most {MAX_ENVS:_} (each is an environment in this "
                    "process)")
        if self.m_steps > MAX_M_STEPS:
            bad("m_steps", f"must be at most {MAX_M_STEPS:_} (passes over one rollout; more "
                "would only overfit it, and an update must end)")
        if not isinstance(self.out_dir, str) or not self.out_dir.strip():
            bad("out_dir", "must name a folder (an empty one would be the current folder)")
        try:
            self.out_dir.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8, as the command line passes them
            bad("out_dir", "must be valid UTF-8 (TensorBoard names its files by it)")
        cpus = os.cpu_count() or 1
        if not 0 <= self.torch_threads <= cpus:
            bad("torch_threads", f"must be between 0 (torch's default) and this machine's "
                                 f"{cpus} CPUs")
        if not (math.isfinite(self.checkpoint_every_s) and self.checkpoint_every_s >= 0):
            bad("checkpoint_every_s", "must be a number >= 0")
        if not (math.isfinite(self.dist_timeout_s) and self.dist_timeout_s > 0):
            bad("dist_timeout_s", "must be a positive number")
        if self.target_return is not None and math.isnan(self.target_return):
            bad("target_return", "must be a number or none")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "must be in [0, 1]")
        if not 0.0 < self.topk_fraction <= 1.0:
            bad("topk_fraction", "must be in (0, 1]")
        for name in ("temperature_init", "epsilon_eta", "epsilon_mu", "epsilon_sigma",
                     "epsilon_categorical", "alpha_init", "policy_lr", "value_lr",
                     "temperature_lr", "alpha_lr", "max_grad_norm", "clip_coef", "value_coef"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                bad(name, "must be a positive number")
        low, high = DUAL_RANGE
        for name in ("temperature_init", "alpha_init"):
            if not low <= getattr(self, name) <= high:
                bad(name, f"must be in [{low:g}, {high:g}], the multipliers' range")
        if not (math.isfinite(self.dual_max_grad_norm) and self.dual_max_grad_norm >= 0):
            bad("dual_max_grad_norm", "must be a number >= 0 (0: not clipped)")
        if not isinstance(self.target_update_period, int) or self.target_update_period < 0:
            bad("target_update_period", "must be an integer >= 0 (0: no target policy)")
        if not (math.isfinite(self.entropy_coef) and self.entropy_coef >= 0):
            bad("entropy_coef", "must be a number >= 0")
        if self.algo == "ppo" and self.lr_schedule in ADAPTIVE_LR_SCHEDULES:
            bad("lr_schedule", "adaptive follows V-MPO's KL bound on the policy's mean; PPO "
                "takes constant or linear")
        for name in ("policy_layer_sizes", "value_layer_sizes"):
            if any(not isinstance(s, int) or s < 1 for s in getattr(self, name)):
                bad(name, "must be positive integers")
        if self.num_minibatches > self.num_envs * self.rollout_steps:
            bad("num_minibatches", f"must be at most the rollout's size (num_envs x "
                f"rollout_steps = {self.num_envs * self.rollout_steps})")
        if not self.env_id:
            bad("env_id", "must not be empty")
        for name in ("min_log_std", "init_log_std"):
            if not math.isfinite(getattr(self, name)):
                bad(name, "must be a finite number")
        if not self.min_log_std < self.init_log_std < 1.0:
            bad("init_log_std", f"must lie between min_log_std ({self.min_log_std}) and 1")
        try:
            torch_device(self.device)
        except ValueError as error:
            bad("device", str(error))
        return self

    @property
    def lam(self) -> float:
        """The lambda the GAE kernel runs with: the estimators are one kernel."""
        return {"gae": self.gae_lambda, "returns": 1.0, "dae": 0.0}[self.advantage_estimator]


def torch_device(name: str) -> torch.device:
    """The torch device ``name`` names, when this machine can run on it (a cpu, or a cuda
    device with CUDA available).

    Raises:
        ValueError: saying why not (without the name).
    """
    import torch  # here: the options themselves (and the run files' names) need no torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError("must be a torch device such as cpu, cuda or cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("needs torch with CUDA and a visible GPU (torch.cuda.is_available() "
                         "is False)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError("must be a cpu or cuda device")
    return device


# every option and its default, by name
OPTION_DEFAULTS: dict[str, object] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
# options whose default differs from what minerva did before they existed: a checkpoint
# without one was trained with this value
LEGACY_DEFAULTS: dict[str, object] = {"encoder": "mlp"}
# options minerva no longer has: the value that did what minerva does now (None: any value,
# for an option that only acted with another one), and why the option went
_M_STEP_STUDY = ("in a 60-trial search over Hopper, Walker2d and Ant it was in none of the "
                 "best ten trials (docs/tuning.md#the-m-step-study)")
REMOVED_OPTIONS: dict[str, tuple[object, str]] = {
    "pipelined_rollout": (False, "stepping half the envs while the policy acted on the other "
                                 "cost more than it overlapped; every env steps at once"),
    "reference_ops": (False, "the pure-Python reference ops are for tests and "
                             "benchmarks/bench_ops.py; training runs the native ones"),
    "optimizer_type": ("adam", "SGD had no preset and no result; Adam is the optimiser"),
    "sgd_momentum": (None, "SGD had no preset and no result; Adam is the optimiser"),
    # the M-step options the study of docs/tuning.md#the-m-step-study found no use for
    "decoupled_likelihood": (False, _M_STEP_STUDY),
    "per_dimension_kl": (False, _M_STEP_STUDY),
    "dual_parameterization": ("log", _M_STEP_STUDY),
    "recompute_advantages": (False, _M_STEP_STUDY),
    "input_layer_norm": (False, _M_STEP_STUDY),
}
