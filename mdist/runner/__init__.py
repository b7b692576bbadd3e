"""`mdist run`: a numpy implementation of the Mistral architecture for local smoke tests (no torch)."""

from mdist.runner.generate import GenerationStats, generate_ids
from mdist.runner.model import KVCache, Model
from mdist.runner.sampling import Sampler
from mdist.runner.tokenizer import StreamDecoder, Tokenizer

__all__ = ["Model", "KVCache", "Sampler", "Tokenizer", "StreamDecoder", "GenerationStats", "generate_ids"]
