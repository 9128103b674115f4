"""Flow-supervision study (paper section 3): factored vs tracking vs projective flow vs 3D supervision only.

Every variant of configs/ablation.py trains from scratch with the same seed, the same labeled set and
the same unlabeled (flow-only) set, on synthetic static and dynamic clips; each is scored on a
held-out set (RRA/RTA/AUC@30 and @5 over all frame pairs, point MSE and Chamfer distance after Sim(3)
alignment in units of the GT scene scale, flow EPE in pixels). The factored variant is also trained
with other amounts of unlabeled data (`--scaling-amounts`, on `--scaling-scene`).

Outputs in --out: data/ (synthetic sets), runs/<run>/ (work directory and metrics.json of every run;
a run with a metrics.json is not trained again), results.json, ablation.md (tables), scaling.png.

    python tools/ablate.py --out /tmp/ablation
    python tools/ablate.py --out /tmp/ablation_big --set total_steps=2000 --set ablation.num_unlabeled_clips=400
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANT_ORDER = ("none", "projective", "tracking", "factored")
VARIANT_LABELS = {"none": "3d-sup", "projective": "flow-projective", "tracking": "flow-tracking",
                  "factored": "flow-factored"}
COLUMNS = ("RRA@30", "RTA@30", "AUC@30", "RRA@5", "RTA@5", "CD", "MSE", "EPE")
LOWER_IS_BETTER = ("CD", "MSE", "EPE")


def apply_overrides(config, overrides):
    """`key.path=value` strings (value a Python literal, else a string) -> set on the locked config."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"--set {item!r}: the config has no key {key!r}")
        node[leaf] = value
    return config


def run_config(variant: str, scene: str, overrides, num_unlabeled: int | None = None):
    """configs/ablation.py for (variant, scene) with the overrides and, if given, the unlabeled amount."""
    from configs import ablation

    config = apply_overrides(ablation.get_config(f"{variant},{scene}"), overrides)
    if num_unlabeled is not None:
        config.ablation.num_unlabeled_clips = num_unlabeled
    return config


def synthetic_set(config, data_dir: str, role: str, num_clips: int, seed: int) -> str:
    """Builds (once) `num_clips` synthetic clips of the config's scene kind and size; returns the dir.

    Clip k of a set depends only on (seed, k), so a smaller set of the same role holds the first clips
    of a larger one.
    """
    from data_pipelines.shards import build_synthetic_shards

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
    config.data.sources = sources
    config.data.eval_sources = [{"path": held_out, "labeled": True, "name": "held_out"}]
    config.global_batch_size = batch
    return config


def evaluate(config, train_state) -> dict:
    """Mean metrics over the held-out clips (module docstring)."""
    import numpy as np

    from flow3r_jax import sharding
    from flow3r_jax.data import pipeline
    from flow3r_jax.evaluation import scoring
    from flow3r_jax.evaluation.metrics.flow import flow_metrics_from_ndc
    from flow3r_jax.models import build_model
    from flow3r_jax.train import optimizer, state as state_lib, train_step

    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    rules = sharding.rules_from_config(config.sharding.rules)
    def make_optimizer(params):
        return optimizer.make_optimizer(config.optimizer, config.total_steps, params)

    layout = state_lib.make_layout(lambda rngs: build_model(config.model, rngs=rngs), make_optimizer, mesh, rules,
                                   config.seed)
    predict = train_step.make_predict_fn(layout)
    at30, at5 = scoring.ScoringSettings(angle_threshold_deg=30), scoring.ScoringSettings(angle_threshold_deg=5)
    per_clip = {name: [] for name in COLUMNS}
    dataset = pipeline.make_eval_dataset(config.data, batch_size=config.eval.batch_size)
    with sharding.use_rules(mesh, rules):
        for index in range(len(dataset)):
            batch = dataset[index]
            out = predict(train_state.params, train_state.buffers, batch["images"], batch["pair_indices"])
            out = {k: np.asarray(v) for k, v in out.items()}
            for b in range(batch["images"].shape[0]):
                cams = {**scoring.camera_metrics("static", out["camera_poses"][b], batch["camera_poses"][b], at30),
                        **scoring.camera_metrics("static", out["camera_poses"][b], batch["camera_poses"][b], at5)}
                points = scoring.point_metrics(out["points"][b], batch["points"][b], batch["valid_mask"][b], at30)
                for name in ("RRA@30", "RTA@30", "AUC@30", "RRA@5", "RTA@5"):
                    per_clip[name].append(cams[name])
                per_clip["CD"].append(points["chamfer"])
                per_clip["MSE"].append(points["MSE"])
                if "flow" in out and np.any(batch["flow_mask"][b] > 0.5):
                    flow = flow_metrics_from_ndc(out["flow"][b], batch["flow_coords"][b], batch["flow_mask"][b])
                    per_clip["EPE"].append(flow["epe"])
    return {name: float(np.mean(values)) if values else None for name, values in per_clip.items()} | {
        "num_clips": len(per_clip["CD"])}


def write_atomic(path: str, data: str | bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.replace(tmp, path)


def train_and_score(name: str, config, out_dir: str) -> dict:
    """Trains one run (resuming from its checkpoints) and scores it; cached in runs/<name>/metrics.json."""
    from flow3r_jax.train import loop

    workdir = os.path.join(out_dir, "runs", name)
    result_path = os.path.join(workdir, "metrics.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    os.makedirs(workdir, exist_ok=True)
    logging.info("training %s", name)
    train_state = loop.train_and_evaluate(config, workdir)
    result = {"run": name, "variant": config.model.flow_head.type,
              "scene": "dynamic" if config.data.synthetic_dynamic else "static",
              "num_labeled": config.ablation.num_labeled_clips,
              "num_unlabeled": config.ablation.num_unlabeled_clips if config.model.flow_head.type != "none" else 0,
              "steps": config.total_steps, "metrics": evaluate(config, train_state)}
    write_atomic(result_path, json.dumps(result, indent=2))
    return result


def _cell(value, column: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if column in LOWER_IS_BETTER else f"{value:.1f}"


def markdown_tables(results: list[dict], scaling: list[dict]) -> str:
    """Per scene a table with one row per variant (paper section 3 layout), then the scaling table."""
    head = "| variant | unlabeled clips | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 2) + "\n"
    text = ("RRA / RTA / AUC in percent over all frame pairs of each held-out clip; CD (Chamfer distance) and "
            "MSE after Sim(3) alignment, in units of the GT scene scale; EPE: flow end-point error in pixels "
            "on co-visible pixels (variants with a flow output).\n")
    for scene in ("static", "dynamic"):
        rows = sorted((r for r in results if r["scene"] == scene), key=lambda r: VARIANT_ORDER.index(r["variant"]))
        if not rows:
            continue
        text += f"\n### {scene} (labeled clips: {rows[0]['num_labeled']}, steps: {rows[0]['steps']})\n\n" + head
        for r in rows:
            cells = " | ".join(_cell(r["metrics"][c], c) for c in COLUMNS)
            text += f"| {VARIANT_LABELS[r['variant']]} | {r['num_unlabeled']} | {cells} |\n"
    if scaling:
        text += f"\n### flow-factored vs unlabeled data ({scaling[0]['scene']})\n\n" + head
        for r in scaling:
            cells = " | ".join(_cell(r["metrics"][c], c) for c in COLUMNS)
            text += f"| {VARIANT_LABELS[r['variant']]} | {r['num_unlabeled']} | {cells} |\n"
    return text


def scaling_plot(path: str, scaling: list[dict], baseline: dict | None) -> None:
    """Metrics of the factored variant vs the number of unlabeled clips (3d-sup as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("RTA@30", "AUC@30", "CD", "MSE")
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.4))
    amounts = [r["num_unlabeled"] for r in scaling]
    for ax, column in zip(axes, shown):
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
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(out_dir: str, results: list[dict], scaling: list[dict], scaling_scene: str) -> str:
    """(Re)writes results.json, ablation.md and (with >= 2 scaling runs) scaling.png; returns the tables."""
    baseline = next((r for r in results if r["variant"] == "none" and r["scene"] == scaling_scene), None)
    write_atomic(os.path.join(out_dir, "results.json"), json.dumps({"runs": results, "scaling": scaling}, indent=2))
    table = markdown_tables(results, scaling)
    write_atomic(os.path.join(out_dir, "ablation.md"), table)
    if len(scaling) >= 2:
        scaling_plot(os.path.join(out_dir, "scaling.png"), scaling, baseline)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (data, runs, tables, plot)")
    parser.add_argument("--variants", default=",".join(VARIANT_ORDER), help="comma-separated flow head types")
    parser.add_argument("--scenes", default="static,dynamic", help="comma-separated: static, dynamic")
    parser.add_argument("--scaling-scene", default="dynamic", help="scene of the unlabeled-data scaling runs")
    parser.add_argument("--scaling-amounts", default="0,32",
                        help="unlabeled-clip counts for extra factored runs (the config's amount is always included)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every run, e.g. total_steps=1000")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    out_dir = os.path.abspath(args.out)
    data_dir = os.path.join(out_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    results, scaling = [], []
    for scene in args.scenes.split(","):
        for variant in args.variants.split(","):
            config = attach_data(run_config(variant, scene, args.set), data_dir)
            results.append(train_and_score(f"{scene}-{variant}", config, out_dir))
            write_report(out_dir, results, scaling, args.scaling_scene)

    if "factored" in args.variants.split(",") and args.scaling_amounts:
        default_amount = run_config("factored", args.scaling_scene, args.set).ablation.num_unlabeled_clips
        amounts = sorted({int(a) for a in args.scaling_amounts.split(",")} | {default_amount})
        shared_run = args.scaling_scene in args.scenes.split(",")
        for amount in amounts:
            config = attach_data(run_config("factored", args.scaling_scene, args.set, amount), data_dir)
            name = (f"{args.scaling_scene}-factored" if amount == default_amount and shared_run
                    else f"{args.scaling_scene}-factored-u{amount}")
            scaling.append(train_and_score(name, config, out_dir))
            write_report(out_dir, results, scaling, args.scaling_scene)

    print(write_report(out_dir, results, scaling, args.scaling_scene))


if __name__ == "__main__":
    main()
