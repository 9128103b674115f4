"""Export a checkpoint or a training work directory to an official-layout PyTorch state_dict.

  python tools/export_pytorch.py --workdir workdirs/run --out flow3r.safetensors
  python tools/export_pytorch.py --checkpoint workdirs/run/checkpoints --model flow3r_large --out flow3r.bin

--workdir rebuilds the recorded model with its latest checkpoint; --checkpoint is an Orbax training
checkpoint directory (latest finalised step) or a PyTorch file of the size --model. The written key set
and shapes equal the official model's, so `Flow3r().load_state_dict(torch.load(...), strict=True)` loads
it (`.bin` needs torch installed).
"""

import sys

from absl import app, flags

from flow3r_jax.inference import model_source
from flow3r_jax.inference.export_weights import check_export, export_to_pytorch

model_source.define_flags()
_OUT = flags.DEFINE_string("out", None, "Output .safetensors or .bin file.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    source = model_source.from_flags()
    try:
        check_export(source, _OUT.value)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"export_pytorch: {error}")
    export_to_pytorch(source, _OUT.value)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
