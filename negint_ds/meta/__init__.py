"""Meta-learned language-specific parameters (Wang et al. 2020, §4.1, Algorithm 1)."""
from .hypergrad import METHODS, SCHEMES, exact_hvp, hypergradient, probe_grads, train_grads, val_grads
from .objective import brute_force_hypergradient, meta_objective
from .passes import eager, fp32_matmuls, math_sdpa, mlm_loss
from .precision import fp32_theta, meta_params
from .state import Hypergradient, MetaInputs, MetaParams

__all__ = ["Hypergradient", "METHODS", "MetaInputs", "MetaParams", "SCHEMES", "brute_force_hypergradient", "eager",
           "exact_hvp", "fp32_matmuls", "fp32_theta", "hypergradient", "math_sdpa", "meta_objective", "meta_params",
           "mlm_loss", "probe_grads", "train_grads", "val_grads"]
