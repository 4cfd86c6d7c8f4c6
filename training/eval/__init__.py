"""Evaluation harness: metrics for generated streams (stability, identity, quality)."""
