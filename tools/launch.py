"""Train Flow3r: `python tools/launch.py --config configs/flow3r_tiny.py --workdir /tmp/run`.

Config values are overridden with `--config.<key>=<value>` (e.g. `--config.total_steps=50`); unknown
keys and values of the wrong type stop the launch with an error naming the key. The resolved config is
written to <workdir>/config.json. On several hosts (TPU pod slices, SLURM or other multi-process GPU
jobs) every process runs this same command with `--multihost`, which calls
`jax.distributed.initialize()` before anything else. `--verbosity=1` also shows the INFO lines of the
libraries underneath (Orbax, Grain, JAX).
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (ml_collections).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the config, checkpoints and TensorBoard logs "
                               "(default: config.workdir).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() before anything else.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    if _MULTIHOST.value:
        jax.distributed.initialize()
    from absl import logging

    from flow3r_jax.train import console, loop

    console.quiet_library_logs(flags.FLAGS.verbosity < 1)
    config = _CONFIG.value
    if _WORKDIR.value:
        config.workdir = _WORKDIR.value
    if not config.workdir:
        raise app.UsageError("no work directory: pass --workdir or --config.workdir")
    logging.info("process %d of %d, %d devices", jax.process_index(), jax.process_count(), jax.device_count())
    loop.train_and_evaluate(config, config.workdir)


if __name__ == "__main__":
    app.run(main)
