"""Evaluation of an encoder: kNN, the L-BFGS linear probe and its baselines,
feature extraction, and the plots of a run.

Nothing is imported here; each module is imported by name.
"""
