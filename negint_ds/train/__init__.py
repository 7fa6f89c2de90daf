"""Pretraining on DeepSpeed: set-up checks, the trainer loop, evaluation, logging and the run directory."""
