"""TRL SFT and DPO on exported data, and success-rate evaluation on held-out tasks. Needs
the ``train`` extra (torch, trl, transformers, datasets)."""
