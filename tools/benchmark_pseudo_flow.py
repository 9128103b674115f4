"""Pseudo-flow accuracy and speed per estimator and frame gap, against the exact flow of synthetic clips.

  python tools/benchmark_pseudo_flow.py                       # 4 clips of 9 frames at 392x518, gaps 1,2,4,8
  python tools/benchmark_pseudo_flow.py --raft_checkpoint raft_large_C_T_SKHT_V2-ff5fadd5.pth --raft_variant large

Rows: DIS direct (each pair estimated directly, forward-backward mask), DIS composed (adjacent-frame
flows chained along the clip, chain mask; data_pipelines/flow_chain.py) and DIS composed as video ingestion
stores it by default (per 2 x 2 cell, cells whose pixels move more than 1 px apart masked;
flow3r_jax/data/flow_grid.py); with --raft_checkpoint, RAFT direct and composed as well. Without a
checkpoint RAFT runs with random weights, for speed only: the header line gives its flow fields/s on
--raft_clips clips, and it gets no accuracy rows.
For each gap g the workload is every pair (i, i+g) and (i+g, i) of every clip. Columns: mean exact
displacement, EPE over kept co-visible pixels and over all co-visible pixels, fraction of co-visible pixels
kept, fraction of non-co-visible pixels wrongly kept, and stored pair targets (flow + mask) per second for
that workload, estimation included (one process; DIS uses OpenCV's threads, RAFT torch's device). The
header gives each estimator's raw speed in flow fields per second.
"""

import time

from absl import app, flags

from data_pipelines.pseudo_flow import as_stored_per_cell, estimate_flows, flow_accuracy, make_estimator, pseudo_flows
from data_pipelines.video import VideoClipConfig
from flow3r_jax.data.synthetic import generate_clip

_HEIGHT = flags.DEFINE_integer("height", 392, "Clip height (pixels).")
_WIDTH = flags.DEFINE_integer("width", 518, "Clip width (pixels).")
_FRAMES = flags.DEFINE_integer("frames", 9, "Frames per clip (the camera arc is spread over the clip).")
_CLIPS = flags.DEFINE_integer("clips", 4, "Synthetic clips (odd seeds dynamic).")
_GAPS = flags.DEFINE_list("gaps", ["1", "2", "4", "8"], "Frame gaps.")
_RAFT_VARIANT = flags.DEFINE_enum("raft_variant", "small", ["small", "large"], "torchvision RAFT model.")
_RAFT_CHECKPOINT = flags.DEFINE_string("raft_checkpoint", None, "Local RAFT state dict; none: random weights.")
_RAFT_CLIPS = flags.DEFINE_integer("raft_clips", 1, "Clips of the RAFT speed line.")
_RAFT_UPDATES = flags.DEFINE_integer("raft_updates", 12, "RAFT recurrent flow updates.")
_DEVICE = flags.DEFINE_string("device", "auto", "RAFT device: auto, cpu, cuda.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    clips = [generate_clip(seed, _HEIGHT.value, _WIDTH.value, _FRAMES.value, dynamic=seed % 2 == 1)
             for seed in range(_CLIPS.value)]
    raft_kwargs = dict(num_flow_updates=_RAFT_UPDATES.value, device=_DEVICE.value)
    if _RAFT_CHECKPOINT.value:
        raft_kwargs["checkpoint_path"] = _RAFT_CHECKPOINT.value
    else:
        raft_kwargs["random_weights"] = True
    raft = make_estimator(f"raft_{_RAFT_VARIANT.value}", **raft_kwargs)
    raft_name = f"raft_{_RAFT_VARIANT.value}" + ("" if _RAFT_CHECKPOINT.value else " (random weights)")
    dis = make_estimator("dis")
    ingestion = VideoClipConfig()
    cells = f"dis composed, {ingestion.flow_stride}x{ingestion.flow_stride} cells"
    rows = [("dis direct", dis, "direct", 1), ("dis composed", dis, "composed", 1),
            (cells, dis, "composed", ingestion.flow_stride)]
    if _RAFT_CHECKPOINT.value:
        rows += [(f"{raft_name} direct", raft, "direct", 1), (f"{raft_name} composed", raft, "composed", 1)]
    print(f"{_CLIPS.value} synthetic clips of {_FRAMES.value} frames at {_HEIGHT.value}x{_WIDTH.value} "
          f"(odd seeds dynamic); RAFT on {raft.device}, {_RAFT_UPDATES.value} updates")
    links = [p for k in range(_FRAMES.value - 1) for p in ((k, k + 1), (k + 1, k))]
    for name, estimator, timed_clips in [("dis", dis, clips), (raft_name, raft, clips[:_RAFT_CLIPS.value])]:
        start = time.perf_counter()
        for clip in timed_clips:
            estimate_flows(estimator, clip.images, links)
        print(f"{name}: {len(timed_clips) * len(links) / (time.perf_counter() - start):.3g} flow fields/s "
              f"(adjacent frames of {len(timed_clips)} clip(s), both directions)")
    print()
    print("| estimator | gap | motion (px) | EPE kept (px) | EPE all (px) | kept | occluded kept | targets/s |")
    print("|---|---|---|---|---|---|---|---|")
    for gap in [int(g) for g in _GAPS.value]:
        pairs = [p for i in range(_FRAMES.value - gap) for p in ((i, i + gap), (i + gap, i))]
        if not pairs:
            raise app.UsageError(f"gap {gap} needs clips of more than {gap} frames (--frames)")
        exact = [[clip.flow(i, j) for i, j in pairs] for clip in clips]
        for name, estimator, mode, stride in rows:
            start = time.perf_counter()
            estimated = [pseudo_flows(clip.images, pairs, estimator, mode) for clip in clips]
            if stride > 1:
                estimated = [as_stored_per_cell(*e, stride, ingestion.flow_cell_error_px) for e in estimated]
            targets_per_s = len(clips) * len(pairs) / (time.perf_counter() - start)
            stats = flow_accuracy(exact, estimated)
            print(f"| {name} | {gap} | {stats['motion']:.1f} | {stats['epe_kept']:.2f} | {stats['epe']:.2f} | "
                  f"{stats['kept_fraction']:.2f} | {stats['occluded_kept']:.2f} | {targets_per_s:.3g} |", flush=True)


if __name__ == "__main__":
    app.run(main)
