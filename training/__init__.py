"""Training: the synthetic corpus (data/), teacher training and the two-stage distillation."""
