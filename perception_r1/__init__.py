"""perception-r1: perception rewards for GRPO post-training of Qwen vision-language models on verl."""

__version__ = "0.1.0"
