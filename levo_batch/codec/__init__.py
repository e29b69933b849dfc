"""What the decoder and the prompt encoders share: the checkpoint reader, the VQ codebooks, and the septoken
encoder (MusicFM conformer + VQ) that turns audio into the tokens the decoder turns back into audio."""
