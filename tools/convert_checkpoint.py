"""Convert a PyTorch state_dict (.bin / .pt / .pth, e.g. the released flow3r.bin) to .safetensors, once.

  python tools/convert_checkpoint.py --input flow3r.bin                    # writes flow3r.safetensors
  python tools/convert_checkpoint.py --input pi3.pt --output /ckpt/pi3.safetensors

Only this conversion needs torch; predict, evaluate and training read the .safetensors file without it
(memory-mapped, so it also loads faster). Floating tensors are stored as float32.
"""

from __future__ import annotations

from absl import app, flags
from etils import epath

from flow3r_jax.interop.pytorch import convert_to_safetensors

_INPUT = flags.DEFINE_string("input", None, "PyTorch state_dict file (.bin, .pt or .pth; local path or URL).")
_OUTPUT = flags.DEFINE_string("output", None, "Destination .safetensors (default: the input with that suffix).")
flags.mark_flags_as_required(["input"])


def main(argv):
    del argv
    output = _OUTPUT.value or str(epath.Path(_INPUT.value).with_suffix(".safetensors"))
    count = convert_to_safetensors(_INPUT.value, output)
    print(f"wrote {count} tensors to {output}")


if __name__ == "__main__":
    app.run(main)
