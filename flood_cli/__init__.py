"""flood: fine-tune BERT classifiers with baseline, flooding or alternating descent/ascent."""

__version__ = "0.1.0"
