"""Clip records and the input pipeline."""
