"""Experiments as one command: spec → runs (pretraining → fine-tuning → analyses) → tables, figures, findings."""
