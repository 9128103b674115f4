"""Export a checkpoint to an official-layout PyTorch state_dict.

  python tools/export_pytorch.py --checkpoint workdirs/run/checkpoints --model flow3r_large --out flow3r.safetensors
  python tools/export_pytorch.py --checkpoint workdirs/run/checkpoints --model flow3r_large --out flow3r.bin

--checkpoint is an Orbax training checkpoint directory (latest finalised step, or --step) or a PyTorch
file. The written key set and shapes equal the official model's, so
`Flow3r().load_state_dict(torch.load(...), strict=True)` loads it (`.bin` needs torch installed).
"""

from __future__ import annotations

import argparse
import pathlib
import sys


from flax import nnx

from flow3r_jax.models.sizes import SIZES, get_model_config
from flow3r_jax.inference.checkpoint import load_model
from flow3r_jax.interop.pytorch import export_pytorch_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="Orbax checkpoint directory or PyTorch file")
    parser.add_argument("--model", default="flow3r_large", choices=sorted(SIZES), help="model size of the checkpoint")
    parser.add_argument("--out", required=True, help="output .safetensors or .bin file")
    args = parser.parse_args(argv)
    cfg = get_model_config(args.model)
    model = load_model(args.model, args.checkpoint)
    export_pytorch_checkpoint(nnx.state(model, nnx.Param), cfg, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
