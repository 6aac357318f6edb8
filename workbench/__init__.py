"""Post-training workbench: SFT, distillation and merging on safetensors checkpoints."""

__version__ = "0.1.0"
