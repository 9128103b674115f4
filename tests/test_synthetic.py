"""Synthetic clips: ground-truth geometry consistency, co-visibility, determinism, shard building."""

import json
import os

import numpy as np
import pytest

from flow3r_jax.data.flow_grid import refine_flow
from flow3r_jax.data.pairs import sample_pairs
from flow3r_jax.data.records import decode_frames
from flow3r_jax.data.shard_reader import read_clips
from flow3r_jax.data.shard_writer import file_sha256, manifest_shard_files
from flow3r_jax.data.synthetic import generate_clip, synthetic_record
from flow3r_jax.data.synthetic_dataset import build_synthetic_shards
from flow3r_jax.geometry.ndc import ndc_to_pixel, pixel_grid

H, W, T = 42, 56, 5
# Stored flow vs reprojection of stored depth: flow quantization (<= 0.004 px here) plus float16 depth
# rounding (relative 2^-11, a few thousandths of a pixel at these baselines) stay far below this.
REPROJECTION_TOL_PX = 0.05


def reproject(depth, intrinsics_i, pose_i, intrinsics_j, pose_j):
    """Static-scene reprojection of frame i's depth into frame j -> (H, W, 2) pixels, (H, W) z in j."""
    pixels = pixel_grid(*depth.shape, np)
    rays = np.concatenate([pixels, np.ones_like(pixels[..., :1])], -1) @ np.linalg.inv(intrinsics_i).T
    world = (rays * depth[..., None]) @ pose_i[:3, :3].T + pose_i[:3, 3]
    cam = (world - pose_j[:3, 3]) @ pose_j[:3, :3]
    proj = cam @ intrinsics_j.T
    return proj[..., :2] / proj[..., 2:], cam[..., 2]


@pytest.fixture(scope="module")
def static_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("static")
    manifest = build_synthetic_shards(out, num_clips=4, num_shards=2, seed=3, height=H, width=W,
                                      frames_per_clip=T, pairs_per_clip=4, dynamic=False, image_format="png")
    return out, manifest


def test_stored_flow_matches_depth_reprojection(static_shards):
    out, _ = static_shards
    checked = 0
    for path in manifest_shard_files(out):
        for clip in read_clips(path):
            assert clip.is_labeled and clip.valid_mask.all()
            for (i, j), coords, mask in zip(clip.flow_pairs, clip.flow_coords, clip.flow_mask, strict=True):
                expected, _ = reproject(clip.depth[i], clip.intrinsics[i], clip.camera_poses[i],
                                        clip.intrinsics[j], clip.camera_poses[j])
                stored = ndc_to_pixel(coords, H, W)
                covisible = mask > 0.5
                assert covisible.mean() > 0.2
                err = np.linalg.norm(stored - expected, axis=-1)[covisible]
                assert err.max() < REPROJECTION_TOL_PX, (clip.source_id, i, j, err.max())
                checked += 1
    assert checked == 16


def test_flow_per_cell_keeps_pixels_within_its_bound_of_the_exact_flow():
    """Exact flow stored per 2 x 2 cell with a 1 px bound: every pixel the mask keeps moves within 1 px (plus
    float32 rounding) of its exact target, only co-visible pixels are kept, and most of them are."""
    exact = synthetic_record(4, H, W, T, 4, dynamic=True)
    cells = synthetic_record(4, H, W, T, 4, dynamic=True, flow_stride=2, flow_cell_error_px=1.0)
    assert cells.flow_stride == 2 and cells.flow_coords.shape == (4, H // 2, W // 2, 2)
    np.testing.assert_array_equal(cells.depth, exact.depth)
    coords, mask = refine_flow(cells.flow_coords, cells.flow_mask, H, W, 2)
    kept, covisible = mask > 0.5, exact.flow_mask > 0.5
    assert not np.any(kept & ~covisible) and kept.sum() >= 0.8 * covisible.sum()
    error = np.linalg.norm(ndc_to_pixel(coords, H, W) - ndc_to_pixel(exact.flow_coords, H, W), axis=-1)
    assert error[kept].max() <= 1.0 + 1e-4
    with pytest.raises(ValueError, match="flow_stride=2 needs flow_cell_error_px"):
        synthetic_record(4, H, W, T, 4, dynamic=True, flow_stride=2)


def test_covisible_pixels_are_photoconsistent_and_depth_consistent(static_shards):
    out, _ = static_shards
    clip = next(read_clips(manifest_shard_files(out)[0]))
    images = decode_frames(clip, range(T)).astype(np.float32) / 255.0
    for (i, j), coords, mask in zip(clip.flow_pairs, clip.flow_coords, clip.flow_mask, strict=True):
        px = np.rint(ndc_to_pixel(coords, H, W)).astype(int)
        covisible = mask > 0.5
        xs, ys = px[..., 0][covisible], px[..., 1][covisible]
        _, z_in_j = reproject(clip.depth[i], clip.intrinsics[i], clip.camera_poses[i], clip.intrinsics[j],
                              clip.camera_poses[j])
        # Rounded to the nearest pixel, the target's depth in frame j agrees with the point's z within 10%
        # (nearest-pixel rounding on slanted surfaces), and so does its colour on average.
        rel = np.abs(clip.depth[j][ys, xs] - z_in_j[covisible]) / z_in_j[covisible]
        assert np.mean(rel < 0.1) > 0.97
        colour_err = np.abs(images[j][ys, xs] - images[i][covisible]).mean()
        assert colour_err < 0.1


def test_occluded_pixels_are_not_covisible():
    clip = generate_clip(11, H, W, T, dynamic=False)
    for i, j in [(0, T - 1), (T - 1, 0)]:
        coords, covisible = clip.flow(i, j)
        _, z_in_j = reproject(clip.depth[i], clip.intrinsics[i], clip.camera_poses[i], clip.intrinsics[j],
                              clip.camera_poses[j])
        lo = np.floor(coords).astype(int)
        inside = (lo[..., 0] >= 0) & (lo[..., 0] < W - 1) & (lo[..., 1] >= 0) & (lo[..., 1] < H - 1)
        xs, ys = np.clip(lo[..., 0], 0, W - 2), np.clip(lo[..., 1], 0, H - 2)
        # Occluded beyond doubt: all four pixels around the target are >= 20% closer to camera j.
        clearly_occluded = inside & np.all([clip.depth[j][ys + dy, xs + dx] < 0.8 * z_in_j
                                            for dy in (0, 1) for dx in (0, 1)], axis=0)
        assert clearly_occluded.sum() > 10
        assert not np.any(covisible & clearly_occluded)
        assert not np.any(covisible & ((coords[..., 0] < 0) | (coords[..., 0] > W - 1)))


def test_dynamic_flow_follows_object_motion():
    clip = generate_clip(2, H, W, T, dynamic=True)
    moving_ids = [k for k in range(1, clip.scene.object_to_world.shape[1])
                  if not np.allclose(clip.scene.object_to_world[0, k], clip.scene.object_to_world[-1, k])]
    assert moving_ids
    coords, covisible = clip.flow(0, T - 1)
    static_guess, _ = reproject(clip.depth[0], clip.intrinsics[0], clip.camera_poses[0],
                                clip.intrinsics[-1], clip.camera_poses[-1])
    moving = np.isin(clip.object_ids[0], moving_ids) & covisible
    still = ~np.isin(clip.object_ids[0], moving_ids) & covisible
    assert moving.sum() > 20
    err = np.linalg.norm(coords - static_guess, axis=-1)
    assert np.median(err[moving]) > 1.0
    assert err[still].max() < 1e-2
    # The moving surface point keeps its colour at its flowed position.
    px = np.rint(coords[moving]).astype(int)
    diff = np.abs(clip.images[-1][px[:, 1], px[:, 0]].astype(float) - clip.images[0][moving].astype(float)) / 255
    assert diff.mean() < 0.1


def test_generation_is_deterministic():
    a, b, c = (generate_clip(s, 28, 42, 3, True) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.camera_poses, b.camera_poses)
    assert not np.array_equal(a.images, c.images)


def test_pair_sampling():
    pairs = sample_pairs(8, 6, seed=0)
    assert pairs.shape == (6, 2) and len({tuple(p) for p in pairs}) == 6
    assert np.all(pairs[:, 0] != pairs[:, 1]) and pairs.min() >= 0 and pairs.max() < 8
    np.testing.assert_array_equal(pairs, sample_pairs(8, 6, seed=0))
    assert np.abs(pairs[:, 0] - pairs[:, 1]).max() <= 7
    assert np.abs(sample_pairs(8, 6, seed=0, max_gap=2)[:, 0] - sample_pairs(8, 6, seed=0, max_gap=2)[:, 1]).max() <= 2
    assert sample_pairs(3, 100, seed=0).shape == (6, 2)


def test_shard_build_is_idempotent_and_repairs_missing_shards(static_shards):
    out, manifest = static_shards
    assert manifest["total_records"] == 4 and manifest["num_shards"] == 2
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    for shard in manifest["shards"]:
        assert file_sha256(out / shard["file"]) == shard["sha256"] and shard["num_records"] == 2
    kwargs = dict(num_clips=4, num_shards=2, seed=3, height=H, width=W, frames_per_clip=T, pairs_per_clip=4,
                  dynamic=False, image_format="png")
    mtimes = {p: os.stat(p).st_mtime_ns for p in out.iterdir()}
    assert build_synthetic_shards(out, **kwargs) == manifest
    assert {p: os.stat(p).st_mtime_ns for p in out.iterdir()} == mtimes
    first, second = manifest_shard_files(out)
    second.unlink()
    assert build_synthetic_shards(out, **kwargs) == manifest
    assert os.stat(first).st_mtime_ns == mtimes[first]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
