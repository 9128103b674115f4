"""Inference on user images or videos: preprocessing, chunked prediction, export and visualisation."""
