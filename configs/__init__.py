"""Training configs (ml_collections): `get_config(arg)` in each recipe module; `common.py` holds the defaults."""
