"""Flow3r: the pi3 multi-view trunk plus a flow head (the factored one by default).

Inputs are channel-last images (B, N, H, W, 3) in [0, 1] with H, W multiples of the patch size (14);
the model normalises them with the ImageNet mean/std itself. Outputs (all float32):
  local_points (B, N, H, W, 3)  per-pixel point in its own camera frame, OpenCV axes, z > 0
  points       (B, N, H, W, 3)  local_points moved to the common world frame by the predicted poses
  conf         (B, N, H, W, 1)  confidence logit
  camera_poses (B, N, 4, 4)     camera-to-world, OpenCV axes, rotation in SO(3)
  flow         (B, S, H, W, 2)  only when pair_indices (B, S, 2) is given and flow_head.type is not
                                "none": NDC coordinates in image j of every pixel of image i, pair s = (i, j)

Flow head types (cfg.flow_head.type): "factored" (the paper's: geometry latents of i, pose latent of j),
"tracking" (appearance only: correlation of per-frame descriptors, models/tracking_head.py),
"projective" (no parameters: predicted points of i projected with the predicted poses and intrinsics
estimated from the points, models/projective_flow.py), "none" (pi3: no flow output).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from flow3r_jax.models.decoder import AlternatingDecoder, OutputDecoder
from flow3r_jax.models.encoder import Encoder
from flow3r_jax.models.flow_head import FactoredFlowHead
from flow3r_jax.models.heads import CameraHead, PatchLinearHead
from flow3r_jax.models.layers import REMAT_POLICIES
from flow3r_jax.models.projective_flow import projective_flow
from flow3r_jax.models.rope import token_positions
from flow3r_jax.models.tracking_head import TrackingFlowHead
from flow3r_jax.sharding import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
FLOW_HEAD_TYPES = ("factored", "tracking", "projective", "none")


class Flow3r(nnx.Module):
    """The Flow3r model (pi3 when cfg.flow_head.type == "none").

    `cfg` is a model config (flow3r_jax/models/sizes.py).
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        if cfg.dtype not in DTYPES:
            raise ValueError(f"model.dtype {cfg.dtype!r}; expected one of {sorted(DTYPES)}")
        if cfg.flow_head.type not in FLOW_HEAD_TYPES:
            raise ValueError(f"model.flow_head.type {cfg.flow_head.type!r}; expected one of {FLOW_HEAD_TYPES}")
        if cfg.remat_policy != "none" and cfg.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"model.remat_policy {cfg.remat_policy!r}; expected 'none' or one of "
                             f"{sorted(REMAT_POLICIES)}")
        dtype = DTYPES[cfg.dtype]
        common = dict(attention_impl=cfg.attention_impl, remat_policy=cfg.remat_policy,
                      scan_unroll=cfg.scan_unroll, dtype=dtype, rngs=rngs)
        self.patch_size = cfg.patch_size
        self.flow_head_type = cfg.flow_head.type
        self.image_mean = tuple(cfg.image_mean)
        self.image_std = tuple(cfg.image_std)
        self.num_register_tokens = cfg.decoder.num_register_tokens
        self.rope_base = cfg.decoder.rope_base
        dec_dim, heads = cfg.decoder.embed_dim, cfg.heads

        self.encoder = Encoder(cfg.encoder, cfg.patch_size, **common)
        self.register_token = nnx.Param(
            nnx.initializers.normal(1e-6)(rngs.params(), (1, 1, self.num_register_tokens, dec_dim), jnp.float32),
            out_sharding=(None, None, None, "embed"))
        self.decoder = AlternatingDecoder(cfg.decoder, **common)
        self.point_decoder = OutputDecoder(2 * dec_dim, heads, heads.point_out_dim, self.rope_base, **common)
        self.point_head = PatchLinearHead(heads.point_out_dim, 3, cfg.patch_size, rngs=rngs)
        self.conf_decoder = OutputDecoder(2 * dec_dim, heads, heads.point_out_dim, self.rope_base, **common)
        self.conf_head = PatchLinearHead(heads.point_out_dim, 1, cfg.patch_size, rngs=rngs)
        self.camera_decoder = OutputDecoder(2 * dec_dim, heads, heads.camera_out_dim, self.rope_base, **common)
        self.camera_head = CameraHead(heads.camera_out_dim, rngs=rngs)
        if cfg.flow_head.type == "factored":
            self.flow_head = FactoredFlowHead(heads.embed_dim, cfg.flow_head, cfg.patch_size, rngs=rngs)
        elif cfg.flow_head.type == "tracking":
            self.flow_head = TrackingFlowHead(heads.embed_dim, cfg.flow_head, cfg.patch_size, rngs=rngs)
        else:
            self.flow_head = None

    def trunk(self, images):
        """images (B, N, H, W, 3) in [0, 1] -> dict of decoder features (B*N, R + h*w, .) and positions."""
        b, n, h, w, _ = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        mean = jnp.asarray(self.image_mean, jnp.float32)
        std = jnp.asarray(self.image_std, jnp.float32)
        x = ((images.astype(jnp.float32) - mean) / std).reshape(b * n, h, w, 3)
        x = constrain(x, ("batch", None, None, None))
        patch_tokens = self.encoder(x)
        registers = jnp.broadcast_to(self.register_token[...][0].astype(patch_tokens.dtype),
                                     (b * n, self.num_register_tokens, patch_tokens.shape[-1]))
        tokens = jnp.concatenate([registers, patch_tokens], axis=1)
        positions = token_positions(b * n, h // self.patch_size, w // self.patch_size, self.num_register_tokens)
        hidden = self.decoder(tokens, positions, n)
        return {"hidden": hidden, "positions": positions}

    def __call__(self, images, pair_indices=None):
        b, n, h, w, _ = images.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        r = self.num_register_tokens
        feats = self.trunk(images)
        hidden, positions = feats["hidden"], feats["positions"]

        point_hidden, point_blocks = self.point_decoder(hidden, positions)
        conf_hidden, _ = self.conf_decoder(hidden, positions)
        camera_hidden, camera_blocks = self.camera_decoder(hidden, positions)

        raw = self.point_head(point_hidden[:, r:], gh, gw).reshape(b, n, h, w, 3)
        z = jnp.exp(raw[..., 2:3])
        local_points = jnp.concatenate([raw[..., :2] * z, z], axis=-1)
        conf = self.conf_head(conf_hidden[:, r:], gh, gw).reshape(b, n, h, w, 1)
        poses = self.camera_head(camera_hidden[:, r:]).reshape(b, n, 4, 4)
        points = jnp.einsum("bnij,bnhwj->bnhwi", poses[..., :3, :3], local_points) + poses[:, :, None, None, :3, 3]
        out = {"points": points, "local_points": local_points, "conf": conf, "camera_poses": poses}

        if pair_indices is None or self.flow_head_type == "none":
            return out
        if self.flow_head_type == "projective":
            out["flow"] = projective_flow(local_points, poses, pair_indices)
            return out
        levels = point_blocks.shape[0]
        point_levels = [point_blocks[k, :, r:].reshape(b, n, gh * gw, -1) for k in range(levels - 4, levels)]
        if self.flow_head_type == "tracking":
            out["flow"] = self.flow_head(point_levels, pair_indices, (h, w))
            return out
        camera_levels = [camera_blocks[k, :, r:].reshape(b, n, gh * gw, -1) for k in range(levels - 4, levels)]
        out["flow"] = self.flow_head(point_levels, camera_levels, pair_indices, (h, w))
        return out


def build_model(cfg, *, rngs: nnx.Rngs) -> Flow3r:
    """Constructs Flow3r from a model config (flow3r_jax/models/sizes.py)."""
    return Flow3r(cfg, rngs=rngs)
