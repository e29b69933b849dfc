"""Tokens -> 48 kHz audio: VQ dequantisation, flow-matching estimator, VAE decoder, windowing."""
