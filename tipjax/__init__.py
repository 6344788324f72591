"""tipjax: on-policy distillation with TIP token selection in JAX/Flax."""

__version__ = "0.1.0"
