"""Training recipes (`sft`, `grpo`) and the pieces they share (`common`, `data`)."""
