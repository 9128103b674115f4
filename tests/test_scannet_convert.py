"""ScanNet-layout converter on a fixture written in that layout from a synthetic clip."""

import cv2
import numpy as np
import pytest

from data_pipelines.scannet import convert_scannet_scene
from flow3r_jax.data.flow_grid import refine_flow
from flow3r_jax.data.records import decode_clip, encode_clip
from flow3r_jax.data.synthetic import generate_clip
from flow3r_jax.geometry.ndc import ndc_to_pixel

H, W, T = 56, 84, 6


def write_scene(root, clip, bad_pose_frame=None):
    """Write `clip` as a ScanNet-style scene (frame ids 0, 10, 20, ...), colour at twice the depth size."""
    for sub in ("color", "depth", "pose", "intrinsic"):
        (root / sub).mkdir(parents=True)
    k = np.eye(4)
    k[:3, :3] = clip.intrinsics[0]
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", k)
    k_colour = k.copy()
    k_colour[:2, :3] *= 2.0
    k_colour[:2, 2] += 0.5  # pixel-centre convention: x' = 2 (x + 0.5) - 0.5
    np.savetxt(root / "intrinsic" / "intrinsic_color.txt", k_colour)
    for t in range(len(clip.images)):
        frame_id = 10 * t
        colour = cv2.resize(clip.images[t], (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(root / "color" / f"{frame_id}.jpg"), colour[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
        cv2.imwrite(str(root / "depth" / f"{frame_id}.png"), np.rint(clip.depth[t] * 1000).astype(np.uint16))
        pose = np.full((4, 4), -np.inf) if t == bad_pose_frame else clip.camera_poses[t]
        np.savetxt(root / "pose" / f"{frame_id}.txt", pose)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    clip = generate_clip(8, H, W, T, dynamic=False)
    root = tmp_path_factory.mktemp("scannet") / "scene0000_00"
    write_scene(root, clip)
    return root, clip


def test_converted_clip_matches_synthetic_ground_truth(scene):
    root, truth = scene
    clips = list(convert_scannet_scene(root, (H, W), clip_length=3, clip_stride=3, frame_step=1, pairs_per_clip=4,
                                       seed=0, flow_stride=1))
    assert [c.source_id for c in clips] == ["scene0000_00:0-20", "scene0000_00:30-50"]
    clip = decode_clip(encode_clip(clips[1]), "scannet#1")
    np.testing.assert_allclose(clip.timestamps, np.array([30, 40, 50]) / 30.0)
    np.testing.assert_allclose(clip.intrinsics[0], truth.intrinsics[3], atol=1e-4)
    np.testing.assert_allclose(clip.camera_poses, truth.camera_poses[3:6], atol=1e-6)
    # Depth: millimetre rounding plus float16 storage.
    np.testing.assert_allclose(clip.depth, truth.depth[3:6], rtol=2.0 ** -11, atol=6e-4)
    assert clip.valid_mask.all()
    for (i, j), coords, mask in zip(clip.flow_pairs, clip.flow_coords, clip.flow_mask, strict=True):
        gt_coords, gt_covisible = truth.flow(3 + i, 3 + j)
        both = (mask > 0.5) & gt_covisible
        # Depth-based co-visibility agrees with the exact one on nearly all pixels (they differ only at
        # occlusion edges, where the nearest-pixel depth test is ambiguous) ...
        assert np.mean((mask > 0.5) == gt_covisible) > 0.95
        # ... and the flow equals the exact flow up to millimetre depth rounding: 0.05 px.
        err = np.linalg.norm(ndc_to_pixel(coords, H, W) - gt_coords, axis=-1)[both]
        assert err.max() < 0.05
    # By default the flow is stored per 2 x 2 cell: every kept pixel within the 1 px bound (plus the depth
    # rounding above) of the exact flow, and most co-visible pixels kept.
    cells = decode_clip(encode_clip(next(convert_scannet_scene(root, (H, W), clip_length=3, clip_stride=3,
                                                               frame_step=1, pairs_per_clip=4, seed=0))))
    assert cells.flow_stride == 2 and cells.flow_coords.shape[1:3] == (H // 2, W // 2)
    per_pixel, masks = refine_flow(cells.flow_coords, cells.flow_mask, H, W, 2)
    for (i, j), coords, mask in zip(cells.flow_pairs, per_pixel, masks, strict=True):
        gt_coords, gt_covisible = truth.flow(i, j)
        kept = mask > 0.5
        assert np.mean(kept & gt_covisible) > 0.8 * np.mean(gt_covisible)
        assert np.linalg.norm(ndc_to_pixel(coords, H, W) - gt_coords, axis=-1)[kept & gt_covisible].max() < 1.05


def test_clips_with_invalid_poses_are_skipped(tmp_path, caplog):
    clip = generate_clip(9, H, W, 4, dynamic=False)
    write_scene(tmp_path / "scene", clip, bad_pose_frame=1)
    clips = list(convert_scannet_scene(tmp_path / "scene", (H, W), clip_length=2, clip_stride=2, frame_step=1,
                                       pairs_per_clip=2))
    assert [c.source_id for c in clips] == ["scene:20-30"]
    assert "invalid poses for frames [10]" in caplog.text


def test_bad_inputs_name_the_file(tmp_path, scene):
    with pytest.raises(ValueError, match="multiples of 14"):
        next(convert_scannet_scene(scene[0], (50, 84)))
    with pytest.raises(FileNotFoundError, match="no \\*.jpg frames"):
        next(convert_scannet_scene(tmp_path, (H, W)))
