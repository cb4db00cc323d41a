"""Rebuild the small dataset and the tiny WordPiece vocabulary that `flood` ships.

Usage: python scripts/make_tiny_assets.py PATH/TO/spam_assassin.csv

The full corpus is not part of the project; this script documents how the shipped
subset (data/spam-assassin-small.csv) and the tokenizer vocabulary
(flood_cli/assets/tiny-tokenizer/) were made, so they can be made again.
"""

import sys
from pathlib import Path

import pandas as pd
from tokenizers import BertWordPieceTokenizer

ROOT = Path(__file__).resolve().parents[1]
N_PER_GROUP = {"easy-ham-1": 420, "easy-ham-2": 240, "hard-ham-1": 120, "spam-1": 120, "spam-2": 300}
MAX_CHARS = 1200
VOCAB_SIZE = 4000


def main(source: str) -> None:
    corpus = pd.read_csv(source)
    parts = [
        corpus[corpus.group == group].sample(n=n, random_state=0)
        for group, n in N_PER_GROUP.items()
    ]
    subset = pd.concat(parts).sample(frac=1.0, random_state=0).reset_index(drop=True)
    subset["text"] = subset["text"].str.slice(0, MAX_CHARS)
    out = ROOT / "data" / "spam-assassin-small.csv"
    subset[["text", "label", "group"]].to_csv(out, index=False)
    print(f"wrote {out}: {len(subset)} rows, {subset.label.value_counts().to_dict()}")

    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(subset["text"].tolist(), vocab_size=VOCAB_SIZE, min_frequency=2)
    folder = ROOT / "flood_cli" / "assets" / "tiny-tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_model(str(folder))  # vocab.txt
    # Saved as a Hugging Face tokenizer folder, which AutoTokenizer loads in
    # transformers 4 and 5 alike (their BertTokenizerFast constructors differ).
    from transformers import BertTokenizerFast

    BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True, model_max_length=512).save_pretrained(str(folder))
    print(f"wrote {folder}: {tokenizer.get_vocab_size()} tokens")


if __name__ == "__main__":
    main(sys.argv[1])
