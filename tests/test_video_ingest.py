"""Video ingestion: videos encoded here with PyAV from synthetic frames -> clips with pseudo-flow."""

import av
import numpy as np
import pytest

from data_pipelines.pseudo_flow import make_estimator, pseudo_flow_targets
from data_pipelines.video import (
    VideoClipConfig,
    VideoError,
    size_multiple_of_14,
    video_clips,
    video_paths,
    video_records,
)
from flow3r_jax.data.flow_grid import coarsen_flow
from flow3r_jax.data.records import decode_clip, decode_frames, encode_clip
from flow3r_jax.data.synthetic import generate_clip


def write_video(path, frames, fps, codec="libx264"):
    """Encode (T, H, W, 3) uint8 frames (even H, W) to `path` with PyAV."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def synthetic_video(tmp_path_factory):
    frames = generate_clip(4, 64, 96, 12, dynamic=False).images
    path = tmp_path_factory.mktemp("video") / "scene.mp4"
    write_video(path, frames, fps=20)
    return path, frames


def test_size_multiple_of_14():
    assert size_multiple_of_14(480, 640, 224 * 224) == (196, 252)
    for h, w, pixels in [(64, 96, 3000), (1080, 1920, 518 * 294), (100, 30, 500)]:
        out_h, out_w = size_multiple_of_14(h, w, pixels)
        assert out_h % 14 == 0 and out_w % 14 == 0 and out_h >= 14 and out_w >= 14


def test_clips_resample_stride_and_resize(synthetic_video):
    path, frames = synthetic_video
    config = VideoClipConfig(target_fps=10, clip_length=3, clip_stride=2, target_pixels=42 * 70)
    clips = list(video_clips(path, config))
    # 12 frames at 20 fps -> 6 frames at 10 fps (every second one) -> clips start at kept frames 0 and 2.
    assert len(clips) == 2
    for k, (images, times) in enumerate(clips):
        assert images.shape == (3, 42, 70, 3) and images.dtype == np.uint8
        np.testing.assert_allclose(times, (np.arange(3) + 2 * k) * 0.1, atol=1e-6)
    # Same content as the source frames (H.264 at default quality, resized): mean error a few levels.
    import cv2
    expected = cv2.resize(frames[2], (70, 42), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(clips[0][0][1].astype(float) - expected).mean() < 12


def test_video_records_carry_pseudo_flow(synthetic_video):
    path, _ = synthetic_video
    config = VideoClipConfig(target_fps=20, clip_length=4, clip_stride=4, target_pixels=56 * 84, pairs_per_clip=3)
    records = list(video_records(path, config, make_estimator("dis"), seed=0))
    assert len(records) == 3
    clip = decode_clip(encode_clip(records[0]), "video#0")
    assert not clip.is_labeled and clip.source_id == f"{path}#0"
    assert clip.flow_stride == config.flow_stride == 2  # DIS flow stored per 2 x 2 cell by default
    assert clip.flow_coords.shape == (3, clip.height // 2, clip.width // 2, 2) and clip.flow_mask.mean() > 0.3
    assert decode_frames(clip, [0, 3]).shape == (2, clip.height, clip.width, 3)


def test_video_records_compose_long_gaps_by_default(synthetic_video):
    path, _ = synthetic_video
    config = VideoClipConfig(target_fps=20, clip_length=6, clip_stride=6, target_pixels=56 * 84, pairs_per_clip=30)
    assert config.flow_mode == "composed" and config.max_gap >= 5
    frames, _ = next(video_clips(path, config))
    clip = next(video_records(path, config, make_estimator("dis"), seed=0))
    gaps = np.abs(clip.flow_pairs[:, 0] - clip.flow_pairs[:, 1])
    assert len(clip.flow_pairs) == 30 and gaps.max() == 5  # every ordered pair of the 6 frames
    coords, masks = coarsen_flow(*pseudo_flow_targets(frames, clip.flow_pairs, make_estimator("dis"), "composed"),
                                 config.flow_stride, config.flow_cell_error_px)
    np.testing.assert_allclose(clip.flow_coords, coords, atol=1e-6)
    np.testing.assert_array_equal(clip.flow_mask, masks)
    assert masks[gaps == 5].mean() > 0.5


def test_undecodable_and_short_videos_name_the_file(tmp_path, synthetic_video):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoError, match="broken.mp4"):
        list(video_clips(bad, VideoClipConfig()))
    path, _ = synthetic_video
    with pytest.raises(VideoError, match=r"scene.mp4: too short for one clip \(6 frames"):
        list(video_clips(path, VideoClipConfig(target_fps=10, clip_length=8)))


def test_video_paths_from_patterns_or_list(tmp_path):
    for name in ["a/x.mp4", "a/b/y.webm", "z.mov"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = video_paths([str(tmp_path / "a/**/*.*"), str(tmp_path / "missing.mp4")])
    assert found == sorted([str(tmp_path / "a/x.mp4"), str(tmp_path / "a/b/y.webm"), str(tmp_path / "missing.mp4")])
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{tmp_path / 'z.mov'}\n\n  {tmp_path / 'a/x.mp4'}  \n")
    assert video_paths(list_file=str(listing)) == [str(tmp_path / "z.mov"), str(tmp_path / "a/x.mp4")]
