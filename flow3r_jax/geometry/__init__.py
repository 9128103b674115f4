"""Camera and point geometry shared by data, losses and evaluation.

Modules: `ndc` (flow NDC conventions), `transforms` (SE(3) and relative poses), `camera` (depth,
projection, reprojection flow), `maps` (depth edges, point-map normals), `alignment` (Umeyama Sim(3),
weighted median, weighted-L1 scale).
"""
