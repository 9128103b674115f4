"""Evaluation of Flow3r: benchmark metrics (`metrics`), benchmark loaders and runners."""
