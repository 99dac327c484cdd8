"""The synthesis frame, training datasets and the procedural phantom."""

from cmrstudio.data.frame import Frame, FramedCase, from_frame, make_frame, to_frame

__all__ = ["Frame", "FramedCase", "from_frame", "make_frame", "to_frame"]
