"""Model architecture configs: one function per named size.

`flow3r_large` is the released Flow3r (1,001,053,694 parameters); `pi3_large` is the same trunk without
the flow head (958,696,732 parameters). `flow3r_tiny` matches the tiny golden set in
`shared/reference/flow3r_tiny/config.json` and trains on a laptop CPU.
"""

import ml_collections


def _base(enc_dim, enc_depth, enc_heads, dec_dim, dec_depth, dec_heads, head_dim, head_heads,
          point_out, camera_out, flow_features, flow_channels):
    m = ml_collections.ConfigDict()
    m.patch_size = 14
    m.image_mean = (0.485, 0.456, 0.406)
    m.image_std = (0.229, 0.224, 0.225)
    m.encoder = ml_collections.ConfigDict(dict(
        embed_dim=enc_dim, depth=enc_depth, num_heads=enc_heads, mlp_ratio=4,
        num_register_tokens=4, pos_embed_grid=37, layerscale_init=1.0))
    m.decoder = ml_collections.ConfigDict(dict(
        embed_dim=dec_dim, depth=dec_depth, num_heads=dec_heads, mlp_ratio=4,
        num_register_tokens=5, rope_base=100.0, layerscale_init=0.01))
    m.heads = ml_collections.ConfigDict(dict(
        embed_dim=head_dim, depth=5, num_heads=head_heads, mlp_ratio=4,
        point_out_dim=point_out, camera_out_dim=camera_out))
    # flow_head.type: "factored" (the paper's head), "tracking" (appearance-only correlation head),
    # "projective" (flow from the predicted points and poses, no parameters) or "none" (pi3: geometry
    # only). `tracking` holds the tracking head's own settings (descriptor channels of its DPT decoder,
    # pooling stride of the correlation, softmax temperature on cosine similarities).
    m.flow_head = ml_collections.ConfigDict(dict(
        type="factored", features=flow_features, out_channels=tuple(flow_channels), head_features=32,
        pos_embed_ratio=0.1,
        tracking=ml_collections.ConfigDict(dict(descriptor_dim=32, corr_stride=2, temperature=0.05))))
    # Compute dtype of the transformer trunk; heads always run in float32. Parameters stay float32.
    m.dtype = "float32"
    # Rematerialisation of each transformer block: "none", "full" (save nothing) or "dots"
    # (save matmul outputs without batch dims).
    m.remat_policy = "none"
    # Unroll the scans over layers (encoder blocks, decoder block pairs, per-output decoder blocks):
    # slower compiles; lets XLA's cost analysis count every layer (flow3r_jax/models/flops.py).
    m.scan_unroll = False
    # Attention kernel (flow3r_jax/models/attention.py): "auto" (TPU: "splash", GPU: "cudnn" for 16-bit
    # compute else "chunked", CPU: "chunked"), "chunked" (memory-linear XLA, any platform), "splash"
    # (Pallas TPU kernel), "cudnn" (fused GPU kernel) or "xla" (reference; quadratic memory).
    m.attention_impl = "auto"
    return m


def flow3r_large():
    return _base(1024, 24, 16, 1024, 36, 16, 1024, 16, 1024, 512, 256, (256, 512, 1024, 1024))


def pi3_large():
    m = flow3r_large()
    m.flow_head.type = "none"
    return m


def flow3r_tiny():
    return _base(64, 2, 2, 64, 4, 2, 32, 2, 64, 32, 16, (16, 32, 64, 64))


def flow3r_small():
    """A small trunk for controlled from-scratch experiments, sized so a study of several runs trains
    on a 2-core CPU within an hour (configs/ablation.py)."""
    return _base(96, 4, 2, 96, 6, 2, 64, 2, 96, 64, 32, (24, 48, 96, 96))


SIZES = {"flow3r_large": flow3r_large, "pi3_large": pi3_large, "flow3r_tiny": flow3r_tiny,
         "flow3r_small": flow3r_small}


def get_model_config(name: str) -> ml_collections.ConfigDict:
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; known: {sorted(SIZES)}")
    return SIZES[name]()
