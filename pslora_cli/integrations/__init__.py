"""pslora inside other libraries' training loops: `transformers` (Trainer, and TRL's SFTTrainer through the mixin)."""
