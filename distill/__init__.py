"""distill: knowledge distillation of Transformer models."""

__version__ = "0.1.0"
