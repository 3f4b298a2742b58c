r"""A MAML-family head on frozen sentence embeddings: ANIL (Raghu et al. 2020) for the episodes protocol.

The encoder stays frozen; episodes carry cached embeddings z (``[B, N*K, 384]``). The model is a small MLP
g(z) = W_2 relu(W_1 z + b_1) + b_2 with N outputs; ANIL adapts only the last layer (W_2, b_2) on each support set
(``inner_steps`` gradient steps of size ``inner_lr``) and meta-learns W_1, b_1 and the head's initialisation through
the query loss (second order), one model per way count N of the protocol. Trained with the shared Trainer
(checkpoints in ``RUN/anil-<N>way/``); scored with the shared ``evaluate`` on the same fixed episodes as ProtoNet.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.intents import TextDataset

__all__ = ["build_anil", "train_anil_heads", "load_anil_heads", "HEADS_FILE"]

HEADS_FILE = "anil_heads.pt"


def build_anil(dim: int, ways: int, hidden: int = 256, inner_lr: float = 0.5, inner_steps: int = 5):
    from ..algorithms import ANIL
    from ..models import MLP

    return ANIL(MLP(dim, ways, hidden=(hidden,)), inner_lr=inner_lr, inner_steps=inner_steps, strategy="loop")


def train_anil_heads(encoder, source: TextDataset, ways_list: list[int], *, steps: int, shots: int, queries: int,
                     meta_batch: int, lr: float, seed: int, run_dir: Path, progress: bool,
                     time_limit: float | None = None) -> dict:
    """One ANIL per way count on episodes of ``source``'s cached frozen embeddings; saves ``RUN/anil_heads.pt``."""
    from ..tasks import EpisodeSampler
    from ..training import Trainer
    from ..training.callbacks import TimeLimit
    from .episodes import embedding_dataset

    vectors = encoder.encode(list(source.texts), cache=True, progress=progress)
    dataset = embedding_dataset(vectors, source, min_examples=shots + queries)
    states, summary = {}, {}
    for ways in ways_list:
        torch.manual_seed(seed)
        learner = build_anil(encoder.dim, ways)
        sampler = EpisodeSampler(dataset, ways=ways, shots=shots, queries=queries, batch_size=meta_batch, seed=seed)
        trainer = Trainer(learner, sampler, steps=steps, lr=lr, val_every=None, out=run_dir / f"anil-{ways}way",
                          log_every=10, checkpoint_every=steps, progress=progress, seed=seed, tensorboard=False,
                          cpu_caching_allocator=False, callbacks=[TimeLimit(time_limit)] if time_limit else ())
        history = trainer.fit(overwrite=True)
        states[str(ways)] = learner.state_dict()
        rows = history.train
        summary[f"{ways}-way"] = {"steps": trainer.step, "final_accuracy": rows[-1].get("accuracy") if rows else None}
    torch.save({"dim": encoder.dim, "states": states}, run_dir / HEADS_FILE)
    return summary


def load_anil_heads(run_dir: Path) -> dict[int, torch.nn.Module]:
    payload = torch.load(Path(run_dir) / HEADS_FILE, weights_only=True)
    heads = {}
    for ways, state in payload["states"].items():
        learner = build_anil(int(payload["dim"]), int(ways))
        learner.load_state_dict(state)
        heads[int(ways)] = learner.eval()
    return heads
