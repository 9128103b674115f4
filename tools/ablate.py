"""Flow-supervision study (paper section 3): every variant and scene of configs/ablation.py.

  python tools/ablate.py --out /tmp/ablation
  python tools/ablate.py --out /tmp/ablation_big --config.total_steps=2000 \
      --config.ablation.num_unlabeled_clips=400 --scaling_amounts=0,100,300

Overrides of the study config (`--config.<key>=<value>`) apply to every run; outputs and caching are
described in flow3r_jax/flow_study.py.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from flow3r_jax import flow_study
from flow3r_jax.train import console

_STUDY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "ablation.py")
_CONFIG = config_flags.DEFINE_config_file("config", _STUDY_CONFIG, "Study config (ml_collections).",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Output folder (data, runs, tables, plot).", required=True)
_VARIANTS = flags.DEFINE_list("variants", list(flow_study.VARIANT_ORDER), "Flow head types to train.")
_SCENES = flags.DEFINE_list("scenes", ["static", "dynamic"], "Scenes: static, dynamic.")
_SCALING_SCENE = flags.DEFINE_enum("scaling_scene", "dynamic", ["static", "dynamic"],
                                   "Scene of the unlabeled-data scaling runs.")
_SCALING_AMOUNTS = flags.DEFINE_list("scaling_amounts", ["0", "32"], "Unlabeled-clip counts of extra factored "
                                     "runs (the config's own amount is always included); empty: none.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.quiet_library_logs(flags.FLAGS.verbosity < 1)
    print(flow_study.run_study(_CONFIG.value, _OUT.value, variants=_VARIANTS.value, scenes=_SCENES.value,
                               scaling_scene=_SCALING_SCENE.value,
                               scaling_amounts=[int(a) for a in _SCALING_AMOUNTS.value]))


if __name__ == "__main__":
    app.run(main)
