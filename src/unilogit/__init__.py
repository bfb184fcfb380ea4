"""unilogit: machine unlearning for LLMs as an `unlearn` stage for LLaMA-Factory."""
