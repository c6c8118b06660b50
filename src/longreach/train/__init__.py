"""Training engine: one loop for continued pretraining and every SFT stage."""
