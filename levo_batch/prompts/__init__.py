"""Prompts: auto-prompt library, prompt audio, source separation, prompt encoders."""
