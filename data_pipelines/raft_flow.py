"""RAFT optical flow (torchvision's model code) as a batched pseudo-flow estimator.

Registered in data_pipelines/pseudo_flow.py as "raft_small" and "raft_large" (torchvision's
`raft_small` / `raft_large`). Optional dependency: `pip install "flow3r_jax[raft]"` (torch +
torchvision); training never imports it. Trained weights are a user download: pass the local file of a
torchvision RAFT state dict (e.g. the `Raft_Large_Weights.C_T_SKHT_V2` release) as `checkpoint_path`;
nothing is fetched at run time. `random_weights=True` builds the model with seeded random weights
instead, for plumbing tests and speed measurements only (its flow is meaningless).

Inputs: uint8 RGB pairs, scaled to [-1, 1] as torchvision's RAFT expects, padded (edge replication) to
sides that are multiples of 8 and at least `MIN_SIDE` (RAFT's 4-level correlation pyramid needs
feature maps of 16 at 1/8 resolution), run in batches of `batch_size` pairs, and the last flow update
cropped back to the input size. Device: "auto" picks CUDA when torch sees a GPU, else the CPU.
"""

from __future__ import annotations

import pathlib
import pickle

import numpy as np

from data_pipelines.pseudo_flow import PseudoFlowError

MIN_SIDE = 128
# torch.library declarations made by `_torchvision_optical_flow`, kept alive for the process.
_DECLARED_OPERATORS = []
_INSTALL = 'pip install "flow3r_jax[raft]" (torch and torchvision)'


def _torchvision_optical_flow():
    """Import torch and torchvision.models.optical_flow, or raise PseudoFlowError saying what to install.

    The CUDA build of torchvision on PyPI registers fake kernels for its `nms` / `qnms` operators at
    import; with a CPU-only torch its C++ library does not load, the operators are undefined and the
    import fails (pytorch/vision#9085). RAFT uses none of torchvision's C++ operators, so in that case
    the two operator schemas are declared (no kernels) and the import is retried.
    """
    try:
        import torch
    except ImportError as err:
        raise PseudoFlowError(f"RAFT flow needs torch: {_INSTALL}") from err
    try:
        from torchvision.models import optical_flow
    except ImportError as err:
        raise PseudoFlowError(f"RAFT flow needs torchvision: {_INSTALL}") from err
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        library = torch.library.Library("torchvision", "DEF")
        for name in ("nms", "qnms"):
            library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _DECLARED_OPERATORS.append(library)
        from torchvision.models import optical_flow
    return torch, optical_flow


class RAFTFlow:
    """torchvision RAFT (`variant` "small" or "large") -> pixel flow; see the module doc."""

    def __init__(self, variant: str, checkpoint_path: str | None = None, random_weights: bool = False,
                 seed: int = 0, num_flow_updates: int = 12, batch_size: int = 8, device: str = "auto"):
        if variant not in ("small", "large"):
            raise PseudoFlowError(f"RAFT variant must be 'small' or 'large', got {variant!r}")
        if (checkpoint_path is None) == (not random_weights):
            raise PseudoFlowError(
                f"raft_{variant} needs exactly one of checkpoint_path=<local file> (download torchvision's "
                f"Raft_{variant.capitalize()}_Weights yourself) or random_weights=True (plumbing and speed "
                f"tests only), got checkpoint_path={checkpoint_path!r}, random_weights={random_weights}")
        torch, optical_flow = _torchvision_optical_flow()
        self._torch = torch
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise PseudoFlowError(f"raft_{variant}: device {device!r} asked for, but torch sees no CUDA GPU")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = getattr(optical_flow, f"raft_{variant}")(weights=None)
        if checkpoint_path is not None:
            _load_state_dict(torch, model, checkpoint_path, variant)
        self._model = model.eval().to(self.device)
        self._num_flow_updates, self._batch_size = num_flow_updates, batch_size

    def __call__(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB source and target -> (H, W, 2) float32 pixel flow source -> target."""
        return self.estimate_batch(source[None], target[None])[0]

    def estimate_batch(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB sources and targets -> (N, H, W, 2) float32 pixel flows."""
        if sources.shape != targets.shape or sources.ndim != 4 or sources.shape[-1] != 3:
            raise PseudoFlowError(f"RAFT needs two (N, H, W, 3) batches of one shape, got {sources.shape} "
                                  f"and {targets.shape}")
        height, width = sources.shape[1:3]
        padded = (_padded_side(height), _padded_side(width))
        flows = []
        with self._torch.inference_mode():
            for start in range(0, len(sources), self._batch_size):
                images = [self._tensor(x[start:start + self._batch_size], padded) for x in (sources, targets)]
                flow = self._model(*images, num_flow_updates=self._num_flow_updates)[-1]
                flows.append(flow[:, :, :height, :width].permute(0, 2, 3, 1).float().cpu().numpy())
        return np.concatenate(flows).astype(np.float32)

    def _tensor(self, images: np.ndarray, padded: tuple[int, int]):
        """(n, H, W, 3) uint8 -> (n, 3, H', W') float in [-1, 1] on the device, edge-padded to `padded`."""
        height, width = images.shape[1:3]
        images = np.pad(images, ((0, 0), (0, padded[0] - height), (0, padded[1] - width), (0, 0)), mode="edge")
        tensor = self._torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        return tensor.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _padded_side(side: int) -> int:
    return max(MIN_SIDE, -(-side // 8) * 8)


def _load_state_dict(torch, model, checkpoint_path: str, variant: str) -> None:
    """Load a torchvision RAFT state dict file into `model`; a wrong or missing file is a PseudoFlowError."""
    path = pathlib.Path(checkpoint_path)
    if not path.is_file():
        raise PseudoFlowError(f"raft_{variant}: checkpoint file {checkpoint_path!r} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, OSError, pickle.UnpicklingError) as err:
        raise PseudoFlowError(f"raft_{variant}: {checkpoint_path} is not a torchvision raft_{variant} state "
                              f"dict: {str(err).splitlines()[0]}") from err
