"""pslora: continual learning with LoRA under the Parameter Stability Loss (PS-LoRA)."""

__version__ = "0.1.0"
