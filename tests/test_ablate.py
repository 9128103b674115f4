"""The flow-supervision study end to end at a tiny size: synthetic sets built, runs trained through the
real loop (Orbax checkpoints, Grain iterators, 8 simulated devices), scored by the config's held-out
evaluator, tables and the scaling plot written; and the study config's variants and scenes."""

import json

import numpy as np
import pytest
from PIL import Image
from support import set_values, with_values

from configs import ablation
from flow3r_jax import flow_study

TINY = {"total_steps": 2, "optimizer.warmup_steps": 1, "model.encoder.depth": 1, "model.decoder.depth": 2,
        "model.heads.depth": 1, "data.height": 28, "data.width": 42, "data.num_frames": 2, "data.pairs_per_sample": 2,
        "data.synthetic_frames_per_clip": 4, "data.synthetic_pairs_per_clip": 4, "ablation.num_labeled_clips": 4,
        "ablation.num_unlabeled_clips": 4, "ablation.num_eval_clips": 8, "ablation.labeled_batch_size": 8,
        "ablation.unlabeled_batch_size": 8, "evals.held_out.batch_size": 8}


def _tiny_study():
    return set_values(ablation.get_config("factored"), TINY)


def test_config_variants_and_errors():
    for variant in ("factored", "tracking", "projective", "none"):
        config = ablation.get_config(f"{variant},dynamic")
        assert config.model.flow_head.type == variant and config.data.synthetic_dynamic
    assert not ablation.get_config("factored").data.synthetic_dynamic
    with pytest.raises(ValueError, match="variant"):
        ablation.get_config("optical")
    with pytest.raises(ValueError, match="scene"):
        ablation.get_config("factored,indoor")
    config = ablation.get_config("none")
    config.total_steps = 77      # the held-out evaluator follows total_steps: it scores after the last step
    assert config.evals.held_out.every_steps == 77
    run = flow_study.run_config(config, "tracking", "dynamic", num_unlabeled=5)
    assert (run.model.flow_head.type, run.data.synthetic_dynamic, run.ablation.num_unlabeled_clips) == \
        ("tracking", True, 5)
    assert config.model.flow_head.type == "none"   # the study config itself is untouched
    assert with_values(run, total_steps=3).evals.held_out.every_steps == 77  # resolved copies keep the value


def test_study_runs_end_to_end(tmp_path):
    flow_study.run_study(_tiny_study(), str(tmp_path), variants=("factored", "none"), scenes=("static",),
                         scaling_scene="static", scaling_amounts=(0,))

    results = json.loads((tmp_path / "results.json").read_text())
    runs = {r["run"]: r for r in results["runs"] + results["scaling"]}
    assert set(runs) == {"static-factored", "static-none", "static-factored-u0"}
    assert runs["static-none"]["num_unlabeled"] == 0 and runs["static-factored"]["num_unlabeled"] == 4
    for run in runs.values():
        metrics = run["metrics"]
        for name in ("RRA@30", "RTA@30", "AUC@30", "RRA@5", "RTA@5"):
            assert 0.0 <= metrics[name] <= 100.0
        assert metrics["CD"] > 0 and metrics["MSE"] > 0
        assert (metrics["EPE"] is None) == (run["variant"] == "none")
    table = (tmp_path / "ablation.md").read_text()
    assert "| 3d-sup | 0 |" in table and "| flow-factored | 4 |" in table and "| flow-factored | 0 |" in table
    plot = np.asarray(Image.open(tmp_path / "scaling.png"))
    assert plot.ndim == 3 and plot.shape[0] > 100 and plot.std() > 0
    for run in runs.values():
        assert (tmp_path / "runs" / run["run"] / "checkpoints" / "2").is_dir()
        assert json.loads((tmp_path / "runs" / run["run"] / "config.json").read_text())["model"]["flow_head"][
            "type"] == run["variant"]
