"""LeVo 2 language model in MLX: conditioning, model, sampling, generation."""
