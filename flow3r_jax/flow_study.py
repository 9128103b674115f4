"""Flow-supervision study (paper section 3): factored vs tracking vs projective flow vs 3D supervision only.

From one study config (configs/ablation.py, with any command-line overrides), every run is a copy with
its variant (`model.flow_head.type`), scene (`data.synthetic_dynamic`) and unlabeled amount
(`ablation.num_unlabeled_clips`) set. Every run trains from scratch with the same seed, the same labeled
and unlabeled (flow-only) sets, through the training loop, and is scored by the config's "held_out"
evaluator on a held-out set: RRA/RTA/AUC@30 and @5 over all frame pairs, point MSE and Chamfer distance
after Sim(3) alignment in units of the GT scene scale, flow EPE in pixels. The factored variant is also
trained with other amounts of unlabeled data.

Outputs in out_dir: data/ (synthetic sets), runs/<run>/ (work directory and metrics.json of every run; a
run with a metrics.json is not trained again), results.json, ablation.md (tables), scaling.png.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence

from absl import logging

from flow3r_jax.data.synthetic_dataset import build_synthetic_shards
from flow3r_jax.files import atomic_path, atomic_write

VARIANT_ORDER = ("none", "projective", "tracking", "factored")
VARIANT_LABELS = {"none": "3d-sup", "projective": "flow-projective", "tracking": "flow-tracking",
                  "factored": "flow-factored"}
# Table column -> metric of the "held_out" evaluator (flow3r_jax/evaluation/held_out.py).
COLUMNS = {"RRA@30": "RRA@30", "RTA@30": "RTA@30", "AUC@30": "AUC@30", "RRA@5": "RRA@5", "RTA@5": "RTA@5",
           "CD": "points_chamfer", "MSE": "points_mse", "EPE": "flow_epe_px"}
LOWER_IS_BETTER = ("CD", "MSE", "EPE")


def run_config(study_config, variant: str, scene: str, num_unlabeled: int | None = None):
    """A copy of the study config for one run."""
    config = copy.deepcopy(study_config)
    config.model.flow_head.type = variant
    config.data.synthetic_dynamic = scene == "dynamic"
    if num_unlabeled is not None:
        config.ablation.num_unlabeled_clips = num_unlabeled
    return config


def synthetic_set(config, data_dir: str, role: str, num_clips: int, seed: int) -> str:
    """Builds (once) `num_clips` synthetic clips of the config's scene kind and size; returns the folder.

    Clip k of a set depends only on (seed, k), so a smaller set of the same role holds the first clips
    of a larger one.
    """
    data = config.data
    kind = "dynamic" if data.synthetic_dynamic else "static"
    height, width = data.synthetic_height or data.height, data.synthetic_width or data.width
    path = os.path.join(data_dir, f"{kind}-{role}-{num_clips}-s{seed}-{height}x{width}")
    build_synthetic_shards(path, num_clips=num_clips, num_shards=min(num_clips, data.synthetic_num_shards),
                           seed=seed + (1000 if data.synthetic_dynamic else 0), height=height, width=width,
                           frames_per_clip=data.synthetic_frames_per_clip,
                           pairs_per_clip=data.synthetic_pairs_per_clip, dynamic=bool(data.synthetic_dynamic))
    return path


def attach_data(config, data_dir: str):
    """Builds the run's labeled / unlabeled / held-out sets and points data sources and batch size at them.

    The "none" variant trains on the labeled set alone; flow variants add the unlabeled set (if any) with
    `unlabeled_batch_size` extra samples per step, so every variant sees the same labeled samples per step.
    """
    study = config.ablation
    labeled = synthetic_set(config, data_dir, "labeled", study.num_labeled_clips, study.labeled_seed)
    sources = [{"path": labeled, "labeled": True, "weight": float(study.labeled_batch_size), "name": "labeled"}]
    batch = study.labeled_batch_size
    if config.model.flow_head.type != "none" and study.num_unlabeled_clips > 0:
        unlabeled = synthetic_set(config, data_dir, "unlabeled", study.num_unlabeled_clips, study.unlabeled_seed)
        sources.append({"path": unlabeled, "labeled": False, "weight": float(study.unlabeled_batch_size),
                        "name": "unlabeled"})
        batch += study.unlabeled_batch_size
    held_out = synthetic_set(config, data_dir, "eval", study.num_eval_clips, study.eval_seed)
    config.data.sources = tuple(sources)
    config.data.eval_sources = ({"path": held_out, "labeled": True, "name": "held_out"},)
    config.global_batch_size = batch
    return config


def train_and_score(name: str, config, out_dir: str) -> dict:
    """Trains one run (resuming from its checkpoints) and scores it; cached in runs/<name>/metrics.json."""
    from flow3r_jax.train import loop

    workdir = os.path.join(out_dir, "runs", name)
    result_path = os.path.join(workdir, "metrics.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    logging.info("training %s", name)
    outcome = loop.train_and_evaluate(config, workdir)
    scores = outcome.evaluations["held_out"]
    result = {"run": name, "variant": config.model.flow_head.type,
              "scene": "dynamic" if config.data.synthetic_dynamic else "static",
              "num_labeled": config.ablation.num_labeled_clips,
              "num_unlabeled": config.ablation.num_unlabeled_clips if config.model.flow_head.type != "none" else 0,
              "steps": config.total_steps,
              "metrics": {column: scores.get(metric) for column, metric in COLUMNS.items()}}
    atomic_write(result_path, json.dumps(result, indent=2))
    return result


def _cell(value, column: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if column in LOWER_IS_BETTER else f"{value:.1f}"


def markdown_tables(results: list[dict], scaling: list[dict]) -> str:
    """Per scene a table with one row per variant (paper section 3 layout), then the scaling table."""
    head = "| variant | unlabeled clips | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 2) + "\n"

    def rows(runs):
        return "".join(f"| {VARIANT_LABELS[r['variant']]} | {r['num_unlabeled']} | "
                       + " | ".join(_cell(r["metrics"][c], c) for c in COLUMNS) + " |\n" for r in runs)

    text = ("RRA / RTA / AUC in percent over all frame pairs of each held-out clip; CD (Chamfer distance) and "
            "MSE after Sim(3) alignment, in units of the GT scene scale; EPE: flow end-point error in pixels "
            "on co-visible pixels (variants with a flow output).\n")
    for scene in ("static", "dynamic"):
        runs = sorted((r for r in results if r["scene"] == scene), key=lambda r: VARIANT_ORDER.index(r["variant"]))
        if runs:
            text += f"\n### {scene} (labeled clips: {runs[0]['num_labeled']}, steps: {runs[0]['steps']})\n\n"
            text += head + rows(runs)
    if scaling:
        text += f"\n### flow-factored vs unlabeled data ({scaling[0]['scene']})\n\n" + head + rows(scaling)
    return text


def scaling_plot(path: str, scaling: list[dict], baseline: dict | None) -> None:
    """Metrics of the factored variant vs the number of unlabeled clips (3d-sup as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("RTA@30", "AUC@30", "CD", "MSE")
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.4))
    amounts = [r["num_unlabeled"] for r in scaling]
    for ax, column in zip(axes, shown, strict=True):
        ax.plot(amounts, [r["metrics"][column] for r in scaling], "o-", label="flow-factored")
        if baseline is not None:
            ax.axhline(baseline["metrics"][column], color="grey", linestyle="--", label="3d-sup")
        ax.set_xlabel("unlabeled clips")
        ax.set_title(column + (" (lower is better)" if column in LOWER_IS_BETTER else " (%)"))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"flow-factored vs unlabeled data ({scaling[0]['scene']}, "
                 f"{scaling[0]['num_labeled']} labeled clips)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_report(out_dir: str, results: list[dict], scaling: list[dict], scaling_scene: str) -> str:
    """(Re)writes results.json, ablation.md and (with >= 2 scaling runs) scaling.png; returns the tables."""
    baseline = next((r for r in results if r["variant"] == "none" and r["scene"] == scaling_scene), None)
    atomic_write(os.path.join(out_dir, "results.json"), json.dumps({"runs": results, "scaling": scaling}, indent=2))
    table = markdown_tables(results, scaling)
    atomic_write(os.path.join(out_dir, "ablation.md"), table)
    if len(scaling) >= 2:
        scaling_plot(os.path.join(out_dir, "scaling.png"), scaling, baseline)
    return table


def run_study(study_config, out_dir: str, *, variants: Sequence[str] = VARIANT_ORDER,
              scenes: Sequence[str] = ("static", "dynamic"), scaling_scene: str = "dynamic",
              scaling_amounts: Sequence[int] = (0, 32)) -> str:
    """Every (scene, variant) run, then the factored scaling runs on `scaling_scene` (the config's own
    unlabeled amount always included); writes the report after each run and returns the tables."""
    out_dir = os.path.abspath(out_dir)
    data_dir = os.path.join(out_dir, "data")
    results, scaling = [], []
    for scene in scenes:
        for variant in variants:
            config = attach_data(run_config(study_config, variant, scene), data_dir)
            results.append(train_and_score(f"{scene}-{variant}", config, out_dir))
            write_report(out_dir, results, scaling, scaling_scene)
    if "factored" in variants and scaling_amounts:
        default_amount = study_config.ablation.num_unlabeled_clips
        for amount in sorted(set(scaling_amounts) | {default_amount}):
            config = attach_data(run_config(study_config, "factored", scaling_scene, amount), data_dir)
            name = (f"{scaling_scene}-factored" if amount == default_amount and scaling_scene in scenes
                    else f"{scaling_scene}-factored-u{amount}")
            scaling.append(train_and_score(name, config, out_dir))
            write_report(out_dir, results, scaling, scaling_scene)
    return write_report(out_dir, results, scaling, scaling_scene)
