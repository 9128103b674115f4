"""Camera and point geometry shared by data, losses and evaluation."""
