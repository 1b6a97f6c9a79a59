"""Hair-trigger constructions at transformer scale (Hugging Face transformers + peft).

Data flows one way: ``data`` (probes, benign sets, splits) → ``models`` (tiny GPT-2/Llama,
SmolLM2) → ``align`` (the statically aligned control) → ``update`` (the victim's step)
→ ``evaluate`` (black-box tests before and after).
"""
