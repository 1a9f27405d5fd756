"""lmrepro: reproduce LLM pretraining end to end.

data → tokenizer → shards → train → export → eval → report
"""

__version__ = "0.1.0"
