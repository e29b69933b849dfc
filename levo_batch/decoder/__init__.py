"""Tokens -> 48 kHz audio: flow-matching estimator, VAE, windowing, and the AudioDecoder built from them."""
