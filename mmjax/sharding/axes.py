"""The names of the mesh axes: ``"data"`` (replicas, each serving its own requests) and ``"model"``
(tensor parallel)."""

AXES = ("data", "model")
DATA, MODEL = AXES
