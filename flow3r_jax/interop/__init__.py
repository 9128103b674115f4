"""Interchange with the official PyTorch checkpoints of Flow3r and pi3."""
