"""Offline training for SVG: SSL pretraining of the demo encoder, stage-1 autoencoder, latent statistics,
stage-2 flow-matching diffusion, evaluation, and the end-to-end demo recipe (see docs/training.md)."""
