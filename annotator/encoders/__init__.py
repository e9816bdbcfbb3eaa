"""Frozen pretrained encoders behind one protocol, loaded by name or path, with an embedding cache."""

from annotator.encoders.base import Encoder, resolve_device
from annotator.encoders.load import load_encoder

__all__ = ["Encoder", "load_encoder", "resolve_device"]
