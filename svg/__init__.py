"""SVG model package: configs and presets, the frozen DINOv3 encoder, residual encoder and alignment, decoder,
SiT, latent normalisation, checkpoints and the parity runner. See docs/ARCHITECTURE.md for the public API."""
