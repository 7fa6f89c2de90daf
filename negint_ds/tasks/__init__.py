"""Downstream evaluation: fine-tuning and zero-shot cross-lingual transfer (paper §3.2, Appendix A)."""
