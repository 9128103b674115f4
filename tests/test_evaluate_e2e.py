"""End to end: synthetic clips written in benchmark layouts, evaluated with ground-truth predictions."""

import json

import numpy as np
import pytest
from PIL import Image

from flow3r_jax.data.synthetic import generate_clip
from flow3r_jax.evaluation.benchmarks import io
from flow3r_jax.evaluation.runner import EvalSettings, evaluate_benchmarks, oracle_predict_fn

HEIGHT, WIDTH, FRAMES = 48, 64, 4


def write_sintel_clip(root, clip, name):
    for f in range(FRAMES):
        stem = f"frame_{f + 1:04d}"
        for sub in ("final", "depth", "camdata_left"):
            (root / "training" / sub / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(clip.images[f]).save(root / "training/final" / name / f"{stem}.png")
        (root / "training/depth" / name / f"{stem}.dpt").write_bytes(
            np.float32(io.SINTEL_TAG).tobytes() + np.array([WIDTH, HEIGHT], "<i4").tobytes()
            + clip.depth[f].astype("<f4").tobytes())
        world_to_camera = np.linalg.inv(clip.camera_poses[f].astype(np.float64))
        (root / "training/camdata_left" / name / f"{stem}.cam").write_bytes(
            np.float32(io.SINTEL_TAG).tobytes() + clip.intrinsics[f].astype("<f8").tobytes()
            + world_to_camera[:3].astype("<f8").tobytes())


def write_seven_scenes_clip(root, clip, scene):
    seq = root / scene / "seq-01"
    seq.mkdir(parents=True)
    (root / scene / "TestSplit.txt").write_text("sequence1\n")
    for f in range(FRAMES):
        Image.fromarray(clip.images[f]).save(seq / f"frame-{f:06d}.color.png")
        millimetres = np.where(clip.depth[f] <= 10, np.round(clip.depth[f] * 1000), 0).astype(np.uint16)
        Image.fromarray(millimetres).save(seq / f"frame-{f:06d}.depth.png")
        np.savetxt(seq / f"frame-{f:06d}.pose.txt", clip.camera_poses[f])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_data")
    write_sintel_clip(root / "sintel", generate_clip(0, HEIGHT, WIDTH, FRAMES, dynamic=True), "alley_2")
    write_sintel_clip(root / "sintel", generate_clip(1, HEIGHT, WIDTH, FRAMES, dynamic=True), "cave_2")
    write_seven_scenes_clip(root / "7scenes", generate_clip(2, HEIGHT, WIDTH, FRAMES, dynamic=False), "chess")
    return root


def test_ground_truth_predictions_score_perfectly(data_root, tmp_path):
    # The synthetic clips use generated intrinsics; 7-Scenes has fixed nominal ones, so the fixture's
    # 7-Scenes clip is read with the loader's intrinsics and its GT points follow from them: the
    # oracle, built from the same loaded sequence, must still match exactly.
    settings = EvalSettings(pixel_limit=28 * 42)          # 64x48 -> 42x28: the resize path is exercised
    summary = evaluate_benchmarks(["sintel", "7scenes"], data_root, oracle_predict_fn, tmp_path, settings,
                                  loader_options={"sintel": {"sequences": ("alley_2", "cave_2")},
                                                  "7scenes": {"kf_every": 1}})
    dynamic, static = summary["sintel"]["metrics"], summary["7scenes"]["metrics"]
    assert summary["sintel"]["num_sequences"] == 2 and summary["7scenes"]["num_sequences"] == 1
    for key in ("ATE", "RPE-t", "MSE"):
        assert dynamic[key] == pytest.approx(0.0, abs=1e-4), key     # float32 poses/points round-off
    # Rotation angles come from arccos of float32-rounded rotations: ~sqrt(2 * 6e-8) rad ~ 0.02 deg.
    assert dynamic["RPE-r"] == pytest.approx(0.0, abs=0.05)
    assert static["MSE"] == pytest.approx(0.0, abs=1e-8)
    for key in ("RRA@30", "RTA@30", "AUC@30"):
        assert static[key] == pytest.approx(100.0, abs=1e-9), key
    assert dynamic["F@5"] == pytest.approx(1.0) and static["F@5"] == pytest.approx(1.0)

    for name in ("sintel__alley_2_trajectory", "sintel__cave_2_trajectory", "7scenes__chess__seq-01_trajectory",
                 "sintel_summary", "7scenes_summary"):
        picture = np.asarray(Image.open(tmp_path / "plots" / f"{name}.png").convert("L"))
        assert picture.shape[0] > 150 and picture.std() > 5, name          # a drawn figure, not a blank image
    per_sequence = json.loads((tmp_path / "sequences" / "sintel__alley_2.json").read_text())
    assert per_sequence["resolution"] == [28, 42] and per_sequence["num_frames"] == FRAMES
    table = (tmp_path / "results.md").read_text()
    assert "| Benchmark | RPE-t | RPE-r | ATE | MSE | F@5 | Sequences |" in table
    assert "| 7scenes | 100.0000 | 100.0000 | 100.0000 | 0.0000 | 1.0000 | 1 |" in table


def test_perturbed_predictions_score_worse(data_root, tmp_path):
    def noisy_oracle(seq):
        exact = oracle_predict_fn(seq)

        def predict(images, pairs):
            out = exact(images, pairs)
            rng = np.random.default_rng(0)
            out["camera_poses"] = out["camera_poses"].copy()
            out["camera_poses"][..., :3, 3] += rng.normal(scale=0.2, size=out["camera_poses"][..., :3, 3].shape)
            out["points"] = out["points"] + rng.normal(scale=0.2, size=out["points"].shape).astype(np.float32)
            return out

        return predict

    summary = evaluate_benchmarks(["sintel"], data_root, noisy_oracle, tmp_path, EvalSettings(pixel_limit=28 * 42),
                                  loader_options={"sintel": {"sequences": ("alley_2",)}})
    metrics = summary["sintel"]["metrics"]
    assert metrics["ATE"] > 1e-2 and metrics["RPE-t"] > 1e-2 and metrics["MSE"] > 1e-3 and metrics["F@5"] < 1.0
