"""Prompts: auto-prompt library, prompt audio, source separation, and the prompt tokens/audio of a job."""
