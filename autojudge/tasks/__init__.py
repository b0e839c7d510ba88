"""Tasks: how prompts are formatted and results scored. GSM8K comes first."""
