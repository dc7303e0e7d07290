"""Image observations: the CNN encoders, uint8 rollouts scaled on the device, the Atari
presets, and a short training run on envpool's Pong."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from minerva.encoders import ImageEncoder, ImpalaCNN, NatureCNN, resolve_encoder
from minerva.networks import VMPOAgent
from minerva.presets import preset

ATARI = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
VECTOR = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)
ACTIONS = gym.spaces.Discrete(6)


@pytest.mark.parametrize("space,asked,expected", [
    (ATARI, "auto", "nature"),
    (gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), "auto", "nature"),
    (VECTOR, "auto", "mlp"),
    (gym.spaces.Box(0, 255, (84,), np.uint8), "auto", "mlp"),  # rank 1: not an image
    (gym.spaces.Box(0.0, 1.0, (4, 84, 84), np.float32), "auto", "mlp"),  # not uint8
    (ATARI, "impala", "impala"),
    (ATARI, "mlp", "mlp"),
])
def test_auto_chooses_the_cnn_for_images(space, asked, expected):
    assert resolve_encoder(asked, space) == expected


def test_a_cnn_asked_of_vector_observations_is_refused():
    with pytest.raises(ValueError, match="encoder 'nature' needs image observations"):
        VMPOAgent(VECTOR, ACTIONS, (), (), encoder="nature")


def test_images_too_small_for_the_nature_cnn_are_named():
    tiny = gym.spaces.Box(0, 255, (4, 16, 16), np.uint8)
    with pytest.raises(ValueError, match="images of 4x16x16 are too small for the nature"):
        VMPOAgent(tiny, ACTIONS, (), ())
    VMPOAgent(tiny, ACTIONS, (), (), encoder="impala")  # pads and pools: any size


@pytest.mark.parametrize("cnn,features,flat", [(NatureCNN, 512, 64 * 7 * 7),
                                               (ImpalaCNN, 256, 32 * 11 * 11)])
def test_cnn_shapes(cnn, features, flat):
    net = cnn(4, 84, 84)
    assert net.linear.in_features == flat
    out = net(torch.rand(3, 4, 84, 84))
    assert out.shape == (3, features) and (out >= 0).all()


def test_images_are_scaled_by_their_bounds_and_moved_channels_first():
    torch.manual_seed(0)
    channels_first = ImageEncoder(gym.spaces.Box(0, 255, (3, 36, 40), np.uint8), "nature")
    channels_last = ImageEncoder(gym.spaces.Box(0, 255, (36, 40, 3), np.uint8), "nature")
    assert channels_last.channels_last and not channels_first.channels_last
    channels_last.load_state_dict(channels_first.state_dict())
    images = torch.randint(0, 256, (2, 3, 36, 40), dtype=torch.uint8)
    expected = channels_first.cnn(images.float() / 255)
    torch.testing.assert_close(channels_first(images), expected)
    torch.testing.assert_close(channels_last(images.permute(0, 2, 3, 1)), expected)


def test_the_image_agent_shares_its_cnn_and_ignores_the_normaliser():
    agent = VMPOAgent(ATARI, ACTIONS, (), (), activation="relu", normalize_observations=True)
    assert agent.encoder_type == "nature" and not agent.normalize_observations
    assert {id(p) for p in agent.encoder_parameters()} == {
        id(p) for p in agent.image_encoder.parameters()}
    observations = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    params, values = agent(observations)
    assert params.shape == (5, 6) and values.shape == (5,)
    # both heads read the CNN: the value loss alone moves its weights
    agent.value(observations).sum().backward()
    assert agent.image_encoder.cnn.linear.weight.grad.abs().sum() > 0


def test_atari_envs_start_from_the_images_preset():
    for env_id in ("Pong-v5", "Breakout-v5"):
        options = preset(env_id)
        assert options["policy_layer_sizes"] == () and options["activation"] == "relu"
        assert options["rollout_steps"] == 128 and options["total_steps"] == 10_000_000
    assert "policy_layer_sizes" not in preset("CartPole-v1")


@pytest.fixture(scope="module")
def pong():
    pytest.importorskip("envpool")
    from minerva.trainers.vmpo.trainer import VMPOTrainer

    trainer = VMPOTrainer("Pong-v5", 0, "cpu", (), (), 8, num_envs=2, activation="relu",
                          eval_episodes=1, eval_max_steps=20, progress=False,
                          backend="envpool")
    yield trainer
    trainer.close()


class _RecordingEnvs:
    """The training envs, keeping every observation batch they return."""

    def __init__(self, envs):
        self._envs, self.returned = envs, []

    def __getattr__(self, name):
        return getattr(self._envs, name)

    def reset(self, *args, **kwargs):
        self.returned.append(self._envs.reset(*args, **kwargs))
        return self.returned[-1]

    def step(self, actions):
        result = self._envs.step(actions)
        self.returned.append(result.observations)
        return result


class _RecordingStorage:
    """The rollout storage, keeping the observations each insert is given."""

    def __init__(self, storage):
        self._storage, self.inserted = storage, []

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def insert(self, observations, *rest):
        self.inserted.append(observations)
        return self._storage.insert(observations, *rest)


def test_uint8_frames_reach_the_storage_without_a_copy_and_stay_uint8(pong):
    collector = pong.collector
    envs, storage = _RecordingEnvs(collector.envs), _RecordingStorage(collector.storage)
    collector.envs, collector.storage, collector.observations = envs, storage, None
    try:
        collector.collect()
    finally:
        collector.envs, collector.storage = envs._envs, storage._storage
    assert pong.storage.observations.dtype == torch.uint8
    assert pong.storage.observations.shape == (8, 2, 4, 84, 84)
    # each step's frames go to the storage as the env returned them: its insert is the
    # only copy (one per step), and what it holds is the frames unchanged
    assert len(storage.inserted) == 8
    for t, frames in enumerate(storage.inserted):
        assert frames is envs.returned[t] and frames.dtype == np.uint8
        assert np.array_equal(pong.storage.observations[t].numpy(), frames)


def test_a_short_pong_run_trains_and_evaluates(pong, tmp_path):
    pong.train(64, str(tmp_path))
    metrics = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any('"eval/return_mean"' in line for line in metrics)
    assert any('"losses/policy_nll"' in line for line in metrics)
    from minerva.checkpoint import load, saved_config

    state = load(tmp_path / "vmpo_last.pt")
    assert saved_config(state, tmp_path)["encoder"] == "auto"
    assert any(key.startswith("image_encoder.cnn.") for key in state["agent"])


def test_the_rollout_memory_check_counts_uint8_frames():
    from minerva.config import TrainConfig
    from minerva.trainers.preflight import check_rollout_memory

    # 2**32 steps of 28,224-byte frames (and 55 bytes of the rest) take 113,116 GiB as
    # uint8; as float32 they would take four times as much
    config = TrainConfig(env_id="Pong-v5", num_envs=65_536, rollout_steps=65_536)
    with pytest.raises(ValueError, match=r"needs 113,116\.0 GiB of storage"):
        check_rollout_memory(config, ATARI, ACTIONS)


@pytest.mark.slow
def test_an_atari_video_is_rendered_by_ale_with_envpools_observations(pong, tmp_path):
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    pytest.importorskip("imageio_ffmpeg")
    import subprocess
    import sys
    import tempfile

    import imageio.v3 as imageio

    from minerva.envs import env_spaces
    from minerva.episodes import make_render_env

    env = make_render_env("Pong-v5")
    try:
        assert env.observation_space == env_spaces("Pong-v5")[0]  # (4, 84, 84) uint8
        assert env.action_space == env_spaces("Pong-v5")[1]
        observation, _ = env.reset(seed=0)
        assert observation.shape == (4, 84, 84) and observation.dtype == np.uint8
        assert env.render().shape == (210, 160, 3)
    finally:
        env.close()
    pong.train(pong.global_step + 16, str(tmp_path), overwrite=True)
    video = tmp_path / "pong.mp4"
    result = subprocess.run(
        [sys.executable, "-P", "-m", "minerva.evaluate", str(tmp_path / "vmpo_last.pt"),
         "--episodes", "1", "--max-steps", "40", "--video", str(video)],
        capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stderr
    assert f"video: {video} (41 frames" in result.stdout
    assert imageio.imread(video).shape[1:] == (210, 160, 3)


def test_checkpoints_from_before_the_encoder_option_keep_their_mlp(pong, tmp_path):
    from minerva.checkpoint import load, saved_config
    from minerva.trainers.vmpo.trainer import VMPOTrainer

    pong.train(pong.global_step + 16, str(tmp_path), overwrite=True)
    state = load(tmp_path / "vmpo_last.pt")
    # an older minerva had no encoder option: its agents were MLPs on any observation
    del state["config"]["encoder"]
    assert saved_config(state, tmp_path)["encoder"] == "mlp"
    # and a CNN run cannot be resumed as another encoder
    with pytest.raises(ValueError, match="encoder: the checkpoint has 'auto' \\(the networks' "
                                         "shape\\); a resumed run cannot change it"):
        VMPOTrainer.from_checkpoint(tmp_path / "vmpo_last.pt", encoder="impala")


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs a CUDA GPU"))])
def test_frames_move_to_the_device_as_uint8_and_are_scaled_there(device, tmp_path):
    pytest.importorskip("envpool")
    from minerva.collector import DeviceRollout
    from minerva.trainers.vmpo.trainer import VMPOTrainer

    trainer = VMPOTrainer("Breakout-v5", 0, device, (), (), 8, num_envs=2, activation="relu",
                          eval_episodes=1, eval_max_steps=20, progress=False)
    try:
        if device == "cpu":  # the GPU path's transfer and update, run on the CPU
            trainer.collector.device_rollout = DeviceRollout(trainer.storage,
                                                             torch.device("cpu"))
        batch = trainer._collect_rollout().batch
        # a quarter of float32's bytes cross to the device; the CNN scales them there
        assert batch.observations.dtype == torch.uint8
        assert batch.observations.device.type == device
        assert batch.observations.data_ptr() != trainer.storage.observations.data_ptr()
        with torch.no_grad():
            expected = trainer.agent.value(trainer.storage.observations.flatten(0, 1).to(device))
        torch.testing.assert_close(batch.values, expected)
        trainer.train(48, str(tmp_path))
    finally:
        trainer.close()
