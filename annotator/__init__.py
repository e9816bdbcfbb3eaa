"""annotator: a multimodal annotation assistant for Label Studio."""

__version__ = "0.1.0"
