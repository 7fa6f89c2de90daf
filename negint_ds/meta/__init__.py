"""Meta-learned language-specific parameters (Wang et al. 2020, §4.1, Algorithm 1)."""
from .hypergrad import (Hypergradient, MetaInputs, hypergradient_exact, hypergradient_fd, meta_objective, mlm_loss,
                        train_grad_theta)

__all__ = ["Hypergradient", "MetaInputs", "hypergradient_exact", "hypergradient_fd", "meta_objective", "mlm_loss",
           "train_grad_theta"]
