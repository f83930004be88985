"""Encoder, heads and the SimCLR model."""
